/*
 * lproc.c - small helpers shared by the bindings (declared in lproc.h).
 */
#include <stdlib.h>
#include <string.h>

#include "lproc.h"

/* Registers the metatable `name` for a handle type: __index = methods, __gc and __close =
 * close (the same function: closing twice is safe), __tostring = tostring. Leaves the
 * stack as it was. */
void lproc_newclass(lua_State *L, const char *name, const luaL_Reg *methods,
                    lua_CFunction close, lua_CFunction tostring)
{
    luaL_newmetatable(L, name);
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
}

/* Returns 1 when the PCRE2 JIT must not be used: LPROC_RE_NOJIT is set, non-empty and not "0".
 * The JIT's SIMD code reads a little past the end of subjects (harmlessly, within the page),
 * which valgrind reports; `make valgrind` sets it. */
int lproc_nojit(void)
{
    const char *v = getenv("LPROC_RE_NOJIT");
    return v != NULL && *v != '\0' && strcmp(v, "0") != 0;
}

/* Writes v in decimal to dst (room: 20 bytes, no NUL); returns the length. */
size_t lproc_fmt_int(char *dst, long long v)
{
    char tmp[20];
    size_t n = 0, k = 0;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (v < 0)
        dst[k++] = '-';
    while (n > 0)
        dst[k++] = tmp[--n];
    return k;
}
