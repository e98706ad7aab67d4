// The messages between node 0's front and another node's DP ranks (multi-node servers), as JSON:
// what a scheduler takes (GenerateInput) and gives back (RequestOutput, SchedulerStats). Every
// field round-trips exactly (floats as JSON numbers keep their value; seeds as unsigned 64-bit).
#pragma once

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "scheduler/scheduler.h"

namespace pdserve::server {

nlohmann::json to_wire(const scheduler::GenerateInput& in);
nlohmann::json to_wire(const scheduler::RequestOutput& out);
nlohmann::json to_wire(const scheduler::SchedulerStats& s);

// kCorrupt naming the missing or mistyped field.
Result<scheduler::GenerateInput> generate_input_from_wire(const nlohmann::json& j);
Result<scheduler::RequestOutput> request_output_from_wire(const nlohmann::json& j);
Result<scheduler::SchedulerStats> scheduler_stats_from_wire(const nlohmann::json& j);

}  // namespace pdserve::server
