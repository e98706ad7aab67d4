// `pdserve tokenize`: the tokenizer as a command-line tool (tests, dataset preparation).
//
//   pdserve tokenize --tokenizer-path DIR --input-file F.json --output-json OUT.json
//                    [--add-special-tokens] [--decode] [--skip-special-tokens]
//
// F.json is a JSON list of strings -> OUT.json {"ids": [[...], ...]}; with --decode, a list of id
// lists -> {"texts": [...]}. --model-path may name the model folder (or its config.json) instead
// of --tokenizer-path. Exit 0 on success; 1 with "error: ..." on stderr for bad input (invalid
// UTF-8, ids out of the vocabulary, malformed JSON); 2 for usage errors.
#pragma once

#include <functional>

#include <CLI/CLI.hpp>

namespace pdserve::tokenizer {

// Registers the subcommand's flags; the returned callback runs it (exit code).
std::function<int()> add_tokenize_command(CLI::App& root);

}  // namespace pdserve::tokenizer
