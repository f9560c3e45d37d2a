/*
 * fuzz_format.c - libFuzzer harness of the format compiler: each input is "FORMAT\nLINE".
 * logfmt.compile(FORMAT) must compile or fail with a clean message; a compiled format must
 * match LINE without error and build an engine (with a typed custom column per variable and a
 * mapping function) whose results keep every invariant (tests/fuzz/harness.lua, format_case).
 */
#define _POSIX_C_SOURCE 200809L
#include "fuzz_lua.h"

static lua_State *L;
static int ref_case;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    L = fuzz_open();
    ref_case = fuzz_ref(L, "format_case", 0);
    lua_settop(L, 0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref_case);
    lua_pushlstring(L, (const char *)data, size);
    fuzz_call(L, 1, 0, "format_case");
    lua_settop(L, 0);
    return 0;
}
