// Command-line helpers shared by every pdserve subcommand (CLI11).
//
// Conventions (DESIGN.md §1): flags keep SGLang's names; an unknown flag is an error, never
// ignored; usage errors exit with 2 (as Python's argparse, which SGLang's tools use) after one
// line "error: ..." on stderr; --help prints usage on stdout and exits 0.
#pragma once

#include <iostream>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>

namespace pdserve {

inline constexpr int kExitUsage = 2;

// Makes `app` and every subcommand below it reject unknown arguments (CLI11 copies allow_extras
// from the parent when a subcommand is created, so a parent switched later would leak).
void forbid_extras(CLI::App& app);

// Parses argv (CLI11 callbacks run as part of parsing). Returns std::nullopt when the program
// should go on, or the exit code to end with: 0 after printing help or version to `out`,
// kExitUsage after "error: <message>" on `err`, or the code of a CLI::RuntimeError that a callback
// threw (printing nothing: the callback has reported its own failure).
std::optional<int> parse_cli(CLI::App& app, int argc, const char* const* argv, std::ostream& out = std::cout,
                             std::ostream& err = std::cerr);

// For apps that do their work in subcommand callbacks: parse_cli, and 0 when it goes on.
int run_cli(CLI::App& app, int argc, const char* const* argv, std::ostream& out = std::cout,
            std::ostream& err = std::cerr);

// --log-level {debug,info,warning,error,critical}, default "info" (or `level` if already set).
CLI::Option* add_log_level_flag(CLI::App& app, std::string& level);

}  // namespace pdserve
