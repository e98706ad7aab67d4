// /start_profile and /stop_profile (sglang-spec §9): one profile id for all ranks, the request
// fanned out to every scheduler, the answer once every rank has taken it.
#pragma once

#include <string>
#include <vector>

#include "http/server.h"
#include "server/rank_handle.h"
#include "scheduler/scheduler.h"

namespace pdserve::server {

// Registers both routes (GET and POST, behind the API key when one is set). `schedulers` must
// outlive the server's routes.
void register_profile_routes(http::Server& server, std::vector<RankHandle*> schedulers,
                             const std::string& api_key);

}  // namespace pdserve::server
