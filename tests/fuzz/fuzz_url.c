/*
 * fuzz_url.c - libFuzzer harness of URL parsing: each input is a request target, split by
 * engine:parse_url (plain and CONNECT) and inside whole "GET|CONNECT <target> HTTP/1.1" lines;
 * the parts must be clean, within their columns, and the same both ways
 * (tests/fuzz/harness.lua, url_case).
 */
#define _POSIX_C_SOURCE 200809L
#include "fuzz_lua.h"

static lua_State *L;
static int ref_case;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    L = fuzz_open();
    ref_case = fuzz_ref(L, "url_case", 0);
    lua_settop(L, 0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref_case);
    lua_pushlstring(L, (const char *)data, size);
    fuzz_call(L, 1, 0, "url_case");
    lua_settop(L, 0);
    return 0;
}
