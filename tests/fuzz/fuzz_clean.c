/*
 * fuzz_clean.c - libFuzzer harness of the cleaning path: each input is one log line, run
 * through the rules of scripts/clean.lua (loaded as the consumer loads them, with the built-in
 * country database) and through custom rules (a wide format, typed custom columns, a mapping
 * function). For both, R:process(line, id) and R:json(line, id) (twice) must keep every
 * invariant of tests/fuzz/harness.lua (check): clean UTF-8, column types and sizes, valid JSON
 * that says what process said.
 */
#define _POSIX_C_SOURCE 200809L
#include "fuzz_lua.h"

static lua_State *L;
static int ref_check, ref_rules[2];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    L = fuzz_open();
    ref_check = fuzz_ref(L, "check", 0);
    ref_rules[0] = fuzz_ref(L, "default_rules", 1);
    ref_rules[1] = fuzz_ref(L, "custom_rules", 1);
    lua_settop(L, 0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int k;
    for (k = 0; k < 2; k++) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, ref_check);
        lua_rawgeti(L, LUA_REGISTRYINDEX, ref_rules[k]);
        lua_pushlstring(L, (const char *)data, size);
        fuzz_call(L, 2, 0, k == 0 ? "check (scripts/clean.lua)" : "check (custom rules)");
    }
    lua_settop(L, 0);
    return 0;
}
