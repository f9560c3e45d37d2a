/*
 * fuzz_lua.h - what the libFuzzer harnesses (tests/fuzz/fuzz_*.c) share: a Lua state made
 * like lproc's host makes it (standard libraries, lproc's modules preloaded, scripts/lib on
 * package.path) with tests/fuzz/harness.lua loaded, and calls into it that turn any Lua error
 * into a crash, so that libFuzzer keeps the input.
 *
 * The source tree is $LPROC_ROOT, else three levels above the executable (build/fuzz/NAME).
 * modules.h is generated next to the harnesses by tests/fuzz/run.sh, one LPROC_MODULE(name)
 * per src/lua_<name>.c, as the Makefile does for lproc.
 */
#ifndef FUZZ_LUA_H
#define FUZZ_LUA_H

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#define LPROC_MODULE(name) int luaopen_lproc_##name(lua_State *L);
#include "modules.h"
#undef LPROC_MODULE

static const luaL_Reg fuzz_modules[] = {
#define LPROC_MODULE(name) {"lproc." #name, luaopen_lproc_##name},
#include "modules.h"
#undef LPROC_MODULE
    {NULL, NULL},
};

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Prints a message on stderr and aborts (a crash for libFuzzer). */
static void fuzz_die(const char *what, const char *msg)
{
    fprintf(stderr, "fuzz: %s: %s\n", what, msg != NULL ? msg : "(no message)");
    fflush(stderr);
    abort();
}

/* The source tree into root (no trailing slash). */
static void fuzz_root(char *root, size_t size)
{
    const char *env = getenv("LPROC_ROOT");
    char exe[PATH_MAX];
    ssize_t n;
    int up;
    if (env != NULL && *env != '\0') {
        snprintf(root, size, "%s", env);
        return;
    }
    n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        fuzz_die("root", "cannot read /proc/self/exe; set LPROC_ROOT");
    exe[n] = '\0';
    for (up = 0; up < 3; up++) {                /* build/fuzz/NAME -> the tree */
        char *slash = strrchr(exe, '/');
        if (slash == NULL || slash == exe)
            fuzz_die("root", "the harness is not in build/fuzz/; set LPROC_ROOT");
        *slash = '\0';
    }
    snprintf(root, size, "%s", exe);
}

/* Message handler: the error with a traceback. */
static int fuzz_msgh(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL)
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* Calls the function below nargs arguments; any error is a crash. Leaves nres results. */
static void fuzz_call(lua_State *L, int nargs, int nres, const char *what)
{
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, fuzz_msgh);
    lua_insert(L, base);
    if (lua_pcall(L, nargs, nres, base) != LUA_OK)
        fuzz_die(what, lua_tostring(L, -1));
    lua_remove(L, base);
}

/* ---- fast versions of harness.lua's checkers (the Lua ones spend ~100 ns a byte) ---- */

/* Length of the valid UTF-8 sequence at p (n bytes left) that is not a control character
 * (C0, DEL, C1), or 0. */
static size_t fuzz_clean_char(const unsigned char *p, size_t n)
{
    unsigned char c = p[0], lo = 0x80, hi = 0xBF;
    size_t need, i;
    if (c < 0x80)
        return c >= 0x20 && c != 0x7f;
    if (c >= 0xC2 && c <= 0xDF)
        need = 1;
    else if (c >= 0xE0 && c <= 0xEF)
        need = 2, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    else if (c >= 0xF0 && c <= 0xF4)
        need = 3, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    else
        return 0;
    if (c == 0xC2 && n > 1 && p[1] <= 0x9F)
        return 0;                                   /* C1 */
    for (i = 1; i <= need; i++) {
        if (i >= n || p[i] < lo || p[i] > hi)
            return 0;
        lo = 0x80;
        hi = 0xBF;
    }
    return need + 1;
}

/* fast.clean_text(s) -> boolean: valid UTF-8 without control characters */
static int fuzz_l_clean_text(lua_State *L)
{
    size_t n, i = 0, k;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
    while (i < n && (k = fuzz_clean_char(s + i, n - i)) > 0)
        i += k;
    lua_pushboolean(L, i == n);
    return 1;
}

/* Appends the JSON string at *i of s (n bytes) decoded to b. Returns 0, or -1 when invalid. */
static int fuzz_json_string(luaL_Buffer *b, const unsigned char *s, size_t n, size_t *i)
{
    size_t k = *i;
    if (k >= n || s[k] != '"')
        return -1;
    k++;
    while (k < n && s[k] != '"') {
        if (s[k] == '\\') {
            static const char esc[] = "\"\\/bfnrt", out[] = "\"\\/\b\f\n\r\t";
            unsigned char e = k + 1 < n ? s[k + 1] : 0;
            const char *simple = strchr(esc, e);
            if (e != 0 && simple != NULL) {
                luaL_addchar(b, out[simple - esc]);
                k += 2;
            } else if (e == 'u' && k + 5 < n) {
                char hex[5];
                unsigned long cp;
                char *end;
                size_t j;
                for (j = 0; j < 4; j++)
                    if (strchr("0123456789abcdefABCDEF", s[k + 2 + j]) == NULL || s[k + 2 + j] == 0)
                        return -1;
                memcpy(hex, s + k + 2, 4);
                hex[4] = '\0';
                cp = strtoul(hex, &end, 16);
                if (cp >= 0xD800 && cp <= 0xDFFF)
                    return -1;
                lua_pushfstring(b->L, "%U", (long)cp);
                luaL_addvalue(b);
                k += 6;
            } else {
                return -1;
            }
        } else {
            size_t c = fuzz_clean_char(s + k, n - k);
            if (c == 0)
                return -1;
            luaL_addlstring(b, (const char *)s + k, c);
            k += c;
        }
    }
    if (k >= n)
        return -1;
    *i = k + 1;
    return 0;
}

/* fast.decode_json(s, NULL) -> keys, values | nil: harness.lua's decode_json without the
 * messages (numbers as {num = text}, null as the NULL given). */
static int fuzz_l_decode_json(lua_State *L)
{
    size_t n, i = 1, count = 0;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
    lua_settop(L, 2);
    lua_newtable(L);                                /* 3: keys */
    lua_newtable(L);                                /* 4: values */
    if (n < 2 || s[0] != '{')
        goto bad;
    for (;;) {
        luaL_Buffer b;
        size_t a;
        luaL_buffinit(L, &b);
        if (fuzz_json_string(&b, s, n, &i) < 0)
            goto bad;
        luaL_pushresult(&b);
        lua_rawseti(L, 3, (lua_Integer)++count);
        if (i >= n || s[i] != ':')
            goto bad;
        i++;
        if (i < n && s[i] == '"') {
            luaL_buffinit(L, &b);
            if (fuzz_json_string(&b, s, n, &i) < 0)
                goto bad;
            luaL_pushresult(&b);
        } else if (n - i >= 4 && memcmp(s + i, "null", 4) == 0) {
            lua_pushvalue(L, 2);
            i += 4;
        } else if (n - i >= 4 && memcmp(s + i, "true", 4) == 0) {
            lua_pushboolean(L, 1);
            i += 4;
        } else if (n - i >= 5 && memcmp(s + i, "false", 5) == 0) {
            lua_pushboolean(L, 0);
            i += 5;
        } else {
            a = i;
            if (i < n && s[i] == '-')
                i++;
            if (i < n && s[i] == '0')
                i++;
            else if (i < n && s[i] >= '1' && s[i] <= '9')
                while (i < n && s[i] >= '0' && s[i] <= '9')
                    i++;
            else
                goto bad;
            if (i + 1 < n && s[i] == '.' && s[i + 1] >= '0' && s[i + 1] <= '9')
                for (i++; i < n && s[i] >= '0' && s[i] <= '9'; i++)
                    ;
            if (i < n && (s[i] == 'e' || s[i] == 'E')) {
                size_t e = i + 1;
                if (e < n && (s[e] == '+' || s[e] == '-'))
                    e++;
                if (e < n && s[e] >= '0' && s[e] <= '9') {
                    for (i = e; i < n && s[i] >= '0' && s[i] <= '9'; i++)
                        ;
                }
            }
            lua_createtable(L, 0, 1);
            lua_pushlstring(L, (const char *)s + a, i - a);
            lua_setfield(L, -2, "num");
        }
        lua_rawseti(L, 4, (lua_Integer)count);
        if (i >= n)
            goto bad;
        if (s[i++] == '}')
            break;
        if (s[i - 1] != ',')
            goto bad;
    }
    if (i != n)
        goto bad;
    return 2;
bad:
    lua_pushnil(L);
    return 1;
}

/* A new state with lproc's modules, harness.lua loaded and initialised; the harness module is
 * left on the stack. */
static lua_State *fuzz_open(void)
{
    char root[PATH_MAX], path[PATH_MAX + 64];
    const luaL_Reg *m;
    lua_State *L = luaL_newstate();
    if (L == NULL)
        fuzz_die("lua", "cannot create a state");
    lua_gc(L, LUA_GCGEN, 0, 0);
    luaL_openlibs(L);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    for (m = fuzz_modules; m->name != NULL; m++) {
        lua_pushcfunction(L, m->func);
        lua_setfield(L, -2, m->name);
    }
    lua_pop(L, 1);
    fuzz_root(root, sizeof root);
    lua_createtable(L, 0, 2);                       /* harness.lua uses these when present */
    lua_pushcfunction(L, fuzz_l_clean_text);
    lua_setfield(L, -2, "clean_text");
    lua_pushcfunction(L, fuzz_l_decode_json);
    lua_setfield(L, -2, "decode_json");
    lua_setglobal(L, "FUZZ_FAST");
    snprintf(path, sizeof path, "%s/tests/fuzz/harness.lua", root);
    lua_pushcfunction(L, fuzz_msgh);
    if (luaL_loadfile(L, path) != LUA_OK || lua_pcall(L, 0, 1, -2) != LUA_OK)
        fuzz_die(path, lua_tostring(L, -1));
    lua_remove(L, -2);
    lua_getfield(L, -1, "init");
    lua_pushstring(L, root);
    fuzz_call(L, 1, 0, "harness.init");
    return L;
}

/* A reference (in the registry) to field name of the table at -1, or to the result of calling
 * it with no argument when call is set. */
static int fuzz_ref(lua_State *L, const char *name, int call)
{
    lua_getfield(L, -1, name);
    if (call)
        fuzz_call(L, 0, 1, name);
    return luaL_ref(L, LUA_REGISTRYINDEX);
}

#endif
