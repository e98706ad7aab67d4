// The only test object whose compile line holds the checkout's paths (see test_paths.h).
// constinit: test files read these from their own static initialisers, so they must not depend on
// dynamic initialisation order.
#include "test_paths.h"

constinit const char* const pdserve_test_source_dir = PDSERVE_SOURCE_DIR_PATH;
constinit const char* const pdserve_test_binary = PDSERVE_BINARY_PATH;
