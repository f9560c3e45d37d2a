/*
 * lproc.c - small helpers shared by the bindings (declared in lproc.h).
 */
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
