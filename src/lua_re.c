/*
 * lua_re.c - lproc.re: PCRE2 regular expressions (8-bit, JIT-compiled) for Lua.
 *
 *   local re = require "lproc.re"
 *   local rx = re.compile([[^(\S+) \S+ (?<user>\S+)]], "")
 *   local ip, user = rx:match(line)
 *
 * Flags (a string of characters): i caseless, m multiline, s dotall, x extended,
 * u UTF-8 and Unicode properties, a anchored. Without u, patterns and subjects are
 * plain bytes and a pattern cannot switch UTF on with (*UTF). With u, the pattern
 * must be valid UTF-8 and subjects may hold invalid sequences (PCRE2_MATCH_INVALID_UTF):
 * no match ever crosses one.
 *
 * Results: an unset group is `false` (so that multiple results keep their positions);
 * a pattern without groups yields the whole match. Positions are 1-based and inclusive
 * like string.find. init is 1-based and may be negative (counts from the end).
 *
 * Each regex owns its match data (pcre2_match_data_create_from_pattern), so matching
 * allocates nothing; subjects are never copied. Matching uses pcre2_jit_match when the
 * JIT compiled the pattern; if the JIT runs out of stack the match is retried with the
 * interpreter. Exceeding the match, depth or heap limit gives nil, "re.<fn>: match
 * limit exceeded" (gmatch raises it: an iterator cannot return an error).
 */
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "lproc.h"

#define RE_REGEX "lproc.re.regex"
#define RE_JITCTX "lproc.re.jitctx"         /* metatable, and registry key of the instance */
#define RE_JIT_STACK_START (32 * 1024)
#define RE_JIT_STACK_MAX (64 * 1024 * 1024)  /* address space; pages used as needed */
#define RE_HEAP_LIMIT_KB (256 * 1024)        /* interpreter backtracking memory (PCRE2: 20 GB) */

/* The match context and JIT stack shared by every regex of a Lua state (matches never
 * nest: callbacks run between matches). PCRE2's default 32 KB JIT stack is too small
 * for patterns like (a|b)* on long subjects. */
typedef struct re_jitctx {
    pcre2_match_context *mctx;
    pcre2_jit_stack *stack;
    int nojit;                  /* LPROC_RE_NOJIT set: interpreter only (for valgrind) */
} re_jitctx;

typedef struct lre {
    pcre2_code *code;
    pcre2_match_data *md;
    int closed;
    int jit;                    /* JIT-compiled */
    int utf;                    /* u flag */
    pcre2_match_context *mctx;  /* the state's re_jitctx (kept alive as user value 3) */
    uint32_t ncap;              /* number of capture groups */
    uint32_t namecount, nameentry;
    PCRE2_SPTR nametable;       /* inside code */
} lre;

/* Frees the compiled pattern and its match data; safe on a closed regex. */
static void re_release(lre *rx)
{
    if (rx->closed)
        return;
    rx->closed = 1;
    pcre2_match_data_free(rx->md);
    pcre2_code_free(rx->code);
    rx->md = NULL;
    rx->code = NULL;
}

/* The regex at idx for function fname; raises on a wrong type or a closed regex. */
static lre *check_re(lua_State *L, int idx, const char *fname)
{
    lre *rx = luaL_testudata(L, idx, RE_REGEX);
    if (rx == NULL)
        luaL_error(L, "%s: bad self (" RE_REGEX " expected, got %s)", fname,
                   luaL_typename(L, idx));
    else if (rx->closed)
        luaL_error(L, "%s: regex is closed", fname);
    return rx;
}

/* The string (or number, converted) at idx, argument number argn of fname; raises otherwise. */
static const char *check_subject(lua_State *L, int idx, int argn, const char *fname, size_t *len)
{
    int t = lua_type(L, idx);
    if (t != LUA_TSTRING && t != LUA_TNUMBER)
        luaL_error(L, "%s: bad argument #%d (string expected, got %s)", fname, argn,
                   luaL_typename(L, idx));
    return lua_tolstring(L, idx, len);
}

/* The optional integer init at idx (argument argn of fname) as a 0-based offset into a
 * subject of len bytes, like string.find; returns 0 when it lies beyond the end + 1. */
static int check_init(lua_State *L, int idx, int argn, const char *fname, size_t len,
                      size_t *off)
{
    lua_Integer init = 1;
    int isnum;

    if (!lua_isnoneornil(L, idx)) {
        if (lua_type(L, idx) != LUA_TNUMBER)
            luaL_error(L, "%s: bad argument #%d (number expected, got %s)", fname, argn,
                       luaL_typename(L, idx));
        init = lua_tointegerx(L, idx, &isnum);
        if (!isnum)
            luaL_error(L, "%s: bad argument #%d (number has no integer representation)",
                       fname, argn);
    }
    if (init > 0) {
        if ((lua_Unsigned)init - 1 > len)
            return 0;
        *off = (size_t)init - 1;
    } else if (init == 0 || (lua_Unsigned)0 - (lua_Unsigned)init > len) {
        *off = 0;
    } else {
        *off = len - (size_t)((lua_Unsigned)0 - (lua_Unsigned)init);
    }
    return 1;
}

/* Appends pattern p (len bytes) to b, escaped: \" \\ \n \r \t, \xHH for other
 * non-printable bytes. */
static void add_escaped(luaL_Buffer *b, const char *p, size_t len)
{
    static const char hexdigits[] = "0123456789abcdef";
    size_t i;

    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '"' || c == '\\') {
            luaL_addchar(b, '\\');
            luaL_addchar(b, (char)c);
        } else if (c == '\n') {
            luaL_addstring(b, "\\n");
        } else if (c == '\r') {
            luaL_addstring(b, "\\r");
        } else if (c == '\t') {
            luaL_addstring(b, "\\t");
        } else if (c < 0x20 || c >= 0x7f) {
            luaL_addstring(b, "\\x");
            luaL_addchar(b, hexdigits[c >> 4]);
            luaL_addchar(b, hexdigits[c & 0x0f]);
        } else {
            luaL_addchar(b, (char)c);
        }
    }
}

/* Runs the regex on subject from byte offset off. Returns > 0 on a match (the ovector
 * holds it), 0 when there is none, or a PCRE2 error code (< 0). */
static int re_exec(lre *rx, const char *subject, size_t len, size_t off)
{
    int rc;

    if (rx->jit) {
        rc = pcre2_jit_match(rx->code, (PCRE2_SPTR)subject, len, off, 0, rx->md, rx->mctx);
        if (rc != PCRE2_ERROR_JIT_STACKLIMIT)
            goto done;
    }
    rc = pcre2_match(rx->code, (PCRE2_SPTR)subject, len, off, PCRE2_NO_JIT, rx->md, rx->mctx);
done:
    if (rc == PCRE2_ERROR_NOMATCH)
        return 0;
    if (rc == 0)                /* ovector too small: cannot happen with our match data */
        rc = (int)rx->ncap + 1;
    return rc;
}

/* Pushes nil and the error message for PCRE2 error rc in function fname; returns 2. */
static int push_match_error(lua_State *L, const char *fname, int rc)
{
    PCRE2_UCHAR msg[256];

    lua_pushnil(L);
    if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT
        || rc == PCRE2_ERROR_HEAPLIMIT || rc == PCRE2_ERROR_JIT_STACKLIMIT) {
        lua_pushfstring(L, "%s: match limit exceeded", fname);
    } else {
        if (pcre2_get_error_message(rc, msg, sizeof msg) < 0)
            strcpy((char *)msg, "unknown error");
        lua_pushfstring(L, "%s: %s", fname, (const char *)msg);
    }
    return 2;
}

/* Pushes group i of the last match (rc as returned by re_exec): a string, or false. */
static void push_group(lua_State *L, lre *rx, const char *subject, int rc, uint32_t i)
{
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(rx->md);

    if (i >= (uint32_t)rc || ov[2 * i] == PCRE2_UNSET)
        lua_pushboolean(L, 0);
    else
        lua_pushlstring(L, subject + ov[2 * i], ov[2 * i + 1] - ov[2 * i]);
}

/* Pushes the captures of the last match (the whole match when the pattern has no
 * groups); returns how many. */
static int push_captures(lua_State *L, lre *rx, const char *subject, int rc)
{
    uint32_t i;

    if (rx->ncap == 0) {
        push_group(L, rx, subject, rc, 0);
        return 1;
    }
    luaL_checkstack(L, (int)rx->ncap, "too many captures");
    for (i = 1; i <= rx->ncap; i++)
        push_group(L, rx, subject, rc, i);
    return (int)rx->ncap;
}

/* re.compile(pattern [, flags]) -> regex; raises on a bad pattern or flag. */
static int l_compile(lua_State *L)
{
    size_t plen, flen = 0, i;
    const char *pat, *flags = "";
    uint32_t opts = 0;
    int errcode;
    PCRE2_SIZE erroff;
    int nojit = 0;
    lre *rx;

    if (lua_type(L, 1) != LUA_TSTRING)
        return luaL_error(L, "re.compile: bad argument #1 (string expected, got %s)",
                          luaL_typename(L, 1));
    pat = lua_tolstring(L, 1, &plen);
    if (!lua_isnoneornil(L, 2)) {
        if (lua_type(L, 2) != LUA_TSTRING)
            return luaL_error(L, "re.compile: bad argument #2 (string expected, got %s)",
                              luaL_typename(L, 2));
        flags = lua_tolstring(L, 2, &flen);
    }
    for (i = 0; i < flen; i++) {
        switch (flags[i]) {
        case 'i': opts |= PCRE2_CASELESS; break;
        case 'm': opts |= PCRE2_MULTILINE; break;
        case 's': opts |= PCRE2_DOTALL; break;
        case 'x': opts |= PCRE2_EXTENDED; break;
        case 'u': opts |= PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF; break;
        case 'a': opts |= PCRE2_ANCHORED; break;
        default:
            lua_pushlstring(L, flags + i, 1);
            return luaL_error(L, "re.compile: bad argument #2 (unknown flag \"%s\")",
                              lua_tostring(L, -1));
        }
    }
    if (!(opts & PCRE2_UTF))
        opts |= PCRE2_NEVER_UTF;

    rx = lua_newuserdatauv(L, sizeof *rx, 3);
    memset(rx, 0, sizeof *rx);
    rx->closed = 1;
    luaL_setmetatable(L, RE_REGEX);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);
    lua_pushlstring(L, flags, flen);
    lua_setiuservalue(L, -2, 2);
    if (lua_getfield(L, LUA_REGISTRYINDEX, RE_JITCTX) == LUA_TUSERDATA) {
        rx->mctx = ((re_jitctx *)lua_touserdata(L, -1))->mctx;
        nojit = ((re_jitctx *)lua_touserdata(L, -1))->nojit;
    }
    lua_setiuservalue(L, -2, 3);

    rx->code = pcre2_compile((PCRE2_SPTR)pat, plen, opts, &errcode, &erroff, NULL);
    if (rx->code == NULL) {
        PCRE2_UCHAR msg[256];
        luaL_Buffer b;
        if (pcre2_get_error_message(errcode, msg, sizeof msg) < 0)
            strcpy((char *)msg, "unknown error");
        luaL_buffinit(L, &b);
        luaL_addstring(&b, "re.compile: ");
        luaL_addstring(&b, (const char *)msg);
        lua_pushfstring(L, " at offset %I in pattern \"", (lua_Integer)erroff);
        luaL_addvalue(&b);
        add_escaped(&b, pat, plen);
        luaL_addchar(&b, '"');
        luaL_pushresult(&b);
        return lua_error(L);
    }
    rx->closed = 0;
    rx->md = pcre2_match_data_create_from_pattern(rx->code, NULL);
    if (rx->md == NULL) {
        re_release(rx);
        return luaL_error(L, "re.compile: not enough memory");
    }
    rx->utf = (opts & PCRE2_UTF) != 0;
    rx->jit = !nojit && pcre2_jit_compile(rx->code, PCRE2_JIT_COMPLETE) == 0;
    pcre2_pattern_info(rx->code, PCRE2_INFO_CAPTURECOUNT, &rx->ncap);
    pcre2_pattern_info(rx->code, PCRE2_INFO_NAMECOUNT, &rx->namecount);
    pcre2_pattern_info(rx->code, PCRE2_INFO_NAMEENTRYSIZE, &rx->nameentry);
    pcre2_pattern_info(rx->code, PCRE2_INFO_NAMETABLE, &rx->nametable);
    return 1;
}

/* rx:match(subject [, init]) -> captures... | nil [, error] */
static int l_match(lua_State *L)
{
    lre *rx = check_re(L, 1, "re.match");
    size_t len, off;
    const char *s = check_subject(L, 2, 1, "re.match", &len);
    int rc;

    if (!check_init(L, 3, 2, "re.match", len, &off)) {
        lua_pushnil(L);
        return 1;
    }
    rc = re_exec(rx, s, len, off);
    if (rc < 0)
        return push_match_error(L, "re.match", rc);
    if (rc == 0) {
        lua_pushnil(L);
        return 1;
    }
    return push_captures(L, rx, s, rc);
}

/* rx:find(subject [, init]) -> start, end, captures... | nil [, error]
 * (captures only when the pattern has groups, like string.find) */
static int l_find(lua_State *L)
{
    lre *rx = check_re(L, 1, "re.find");
    size_t len, off;
    const char *s = check_subject(L, 2, 1, "re.find", &len);
    PCRE2_SIZE *ov;
    int rc;

    if (!check_init(L, 3, 2, "re.find", len, &off)) {
        lua_pushnil(L);
        return 1;
    }
    rc = re_exec(rx, s, len, off);
    if (rc < 0)
        return push_match_error(L, "re.find", rc);
    if (rc == 0) {
        lua_pushnil(L);
        return 1;
    }
    ov = pcre2_get_ovector_pointer(rx->md);
    lua_pushinteger(L, (lua_Integer)ov[0] + 1);
    lua_pushinteger(L, (lua_Integer)ov[1]);
    return rx->ncap == 0 ? 2 : 2 + push_captures(L, rx, s, rc);
}

/* rx:exec(subject [, init]) -> t, start, end | nil [, error]
 * t[0] is the whole match, t[1..n] the groups, t[name] the named groups (false when
 * unset; with duplicate names, the first set group of that name). */
static int l_exec(lua_State *L)
{
    lre *rx = check_re(L, 1, "re.exec");
    size_t len, off;
    const char *s = check_subject(L, 2, 1, "re.exec", &len);
    PCRE2_SIZE *ov;
    uint32_t i;
    int rc;

    if (!check_init(L, 3, 2, "re.exec", len, &off)) {
        lua_pushnil(L);
        return 1;
    }
    rc = re_exec(rx, s, len, off);
    if (rc < 0)
        return push_match_error(L, "re.exec", rc);
    if (rc == 0) {
        lua_pushnil(L);
        return 1;
    }
    lua_createtable(L, (int)rx->ncap, (int)rx->namecount + 1);
    for (i = 0; i <= rx->ncap; i++) {
        push_group(L, rx, s, rc, i);
        lua_rawseti(L, -2, i);
    }
    for (i = 0; i < rx->namecount; i++) {
        PCRE2_SPTR e = rx->nametable + (size_t)i * rx->nameentry;
        uint32_t n = ((uint32_t)e[0] << 8) | e[1];
        lua_pushstring(L, (const char *)e + 2);
        if (lua_rawget(L, -2) == LUA_TSTRING) {     /* a duplicate name already set */
            lua_pop(L, 1);
            continue;
        }
        lua_pop(L, 1);
        lua_pushstring(L, (const char *)e + 2);
        lua_rawgeti(L, -2, n);
        lua_rawset(L, -3);
    }
    ov = pcre2_get_ovector_pointer(rx->md);
    lua_pushinteger(L, (lua_Integer)ov[0] + 1);
    lua_pushinteger(L, (lua_Integer)ov[1]);
    return 3;
}

/* The offset just after the character at off (one byte, or a whole UTF-8 sequence in
 * u mode so that no search starts inside a character). */
static size_t next_char(lre *rx, const char *s, size_t len, size_t off)
{
    off++;
    if (rx->utf) {
        while (off < len && ((unsigned char)s[off] & 0xc0) == 0x80)
            off++;
    }
    return off;
}

/* The gmatch iterator. Upvalues: regex, subject, next offset, end of the last match
 * (-1 before the first). Like Lua 5.4, an empty match right after the previous match
 * is skipped. */
static int gmatch_aux(lua_State *L)
{
    lre *rx = check_re(L, lua_upvalueindex(1), "re.gmatch");
    size_t len;
    const char *s = lua_tolstring(L, lua_upvalueindex(2), &len);
    lua_Integer off = lua_tointeger(L, lua_upvalueindex(3));
    lua_Integer last = lua_tointeger(L, lua_upvalueindex(4));
    PCRE2_SIZE *ov;
    int rc;

    while (off <= (lua_Integer)len) {
        rc = re_exec(rx, s, len, (size_t)off);
        if (rc < 0) {
            push_match_error(L, "re.gmatch", rc);
            return lua_error(L);
        }
        if (rc == 0)
            break;
        ov = pcre2_get_ovector_pointer(rx->md);
        if ((lua_Integer)ov[1] == last) {               /* empty match at the last end */
            off = (lua_Integer)next_char(rx, s, len, ov[0]);
            continue;
        }
        lua_pushinteger(L, (lua_Integer)ov[1]);
        lua_copy(L, -1, lua_upvalueindex(3));
        lua_replace(L, lua_upvalueindex(4));
        return push_captures(L, rx, s, rc);
    }
    lua_pushinteger(L, (lua_Integer)len + 1);
    lua_replace(L, lua_upvalueindex(3));
    return 0;
}

/* rx:gmatch(subject [, init]) -> iterator over the captures of each match */
static int l_gmatch(lua_State *L)
{
    size_t len, off;

    check_re(L, 1, "re.gmatch");
    check_subject(L, 2, 1, "re.gmatch", &len);
    if (!check_init(L, 3, 2, "re.gmatch", len, &off))
        off = len + 1;
    lua_settop(L, 2);
    lua_pushinteger(L, (lua_Integer)off);
    lua_pushinteger(L, -1);
    lua_pushcclosure(L, gmatch_aux, 4);
    return 1;
}

/* Appends the replacement for the match of rx in s to b: repl (at index 3) is a string
 * with %0-%9 and %%, a table indexed by the first capture, or a function called with the
 * captures; false or nil from a table or function keeps the match. */
static void add_replacement(lua_State *L, luaL_Buffer *b, lre *rx, const char *s, int rc,
                            size_t ms, size_t me)
{
    int t = lua_type(L, 3);

    if (t == LUA_TSTRING || t == LUA_TNUMBER) {
        size_t rlen, i;
        const char *r = lua_tolstring(L, 3, &rlen);
        for (i = 0; i < rlen; i++) {
            if (r[i] != '%') {
                luaL_addchar(b, r[i]);
                continue;
            }
            i++;
            if (i < rlen && r[i] == '%') {
                luaL_addchar(b, '%');
            } else if (i < rlen && r[i] >= '0' && r[i] <= '9') {
                uint32_t g = (uint32_t)(r[i] - '0');
                if (g == 1 && rx->ncap == 0)
                    g = 0;
                if (g > rx->ncap)
                    luaL_error(L, "re.gsub: invalid capture index %%%d in replacement string",
                               (int)g);
                push_group(L, rx, s, rc, g);
                if (lua_isstring(L, -1))
                    luaL_addvalue(b);
                else
                    lua_pop(L, 1);
            } else {
                luaL_error(L, "re.gsub: invalid use of '%%' in replacement string");
            }
        }
        return;
    }
    if (t == LUA_TTABLE) {
        push_group(L, rx, s, rc, rx->ncap == 0 ? 0 : 1);
        lua_gettable(L, 3);
    } else {
        int n;
        lua_pushvalue(L, 3);
        n = push_captures(L, rx, s, rc);
        lua_call(L, n, 1);
    }
    if (!lua_toboolean(L, -1)) {
        lua_pop(L, 1);
        luaL_addlstring(b, s + ms, me - ms);
    } else if (lua_isstring(L, -1)) {
        luaL_addvalue(b);
    } else {
        luaL_error(L, "re.gsub: invalid replacement value (a %s)", luaL_typename(L, -1));
    }
}

/* rx:gsub(subject, repl [, n]) -> result, count | nil, error
 * Like string.gsub: repl is a string (%0-%9, %%), a table or a function. */
static int l_gsub(lua_State *L)
{
    lre *rx = check_re(L, 1, "re.gsub");
    size_t len, src = 0, ms, me;
    const char *s = check_subject(L, 2, 1, "re.gsub", &len);
    int t = lua_type(L, 3), rc;
    lua_Integer max = (lua_Integer)len + 1, n = 0, last = -1;
    luaL_Buffer b;

    if (t != LUA_TSTRING && t != LUA_TNUMBER && t != LUA_TTABLE && t != LUA_TFUNCTION)
        return luaL_error(L, "re.gsub: bad argument #2 (string/function/table expected, "
                          "got %s)", luaL_typename(L, 3));
    if (!lua_isnoneornil(L, 4)) {
        int isnum;
        max = lua_tointegerx(L, 4, &isnum);
        if (!isnum || lua_type(L, 4) != LUA_TNUMBER)
            return luaL_error(L, "re.gsub: bad argument #3 (integer expected, got %s)",
                              luaL_typename(L, 4));
    }
    lua_settop(L, 3);
    luaL_buffinit(L, &b);
    while (n < max && src <= len) {
        PCRE2_SIZE *ov;
        rc = re_exec(rx, s, len, src);
        if (rc < 0)
            return push_match_error(L, "re.gsub", rc);
        if (rc == 0)
            break;
        ov = pcre2_get_ovector_pointer(rx->md);
        ms = ov[0];
        me = ov[1];
        luaL_addlstring(&b, s + src, ms - src);
        if ((lua_Integer)me == last) {                  /* empty match at the last end */
            src = next_char(rx, s, len, ms);
            luaL_addlstring(&b, s + ms, (src > len ? len : src) - ms);
            continue;
        }
        n++;
        add_replacement(L, &b, rx, s, rc, ms, me);
        if (rx->closed)
            return luaL_error(L, "re.gsub: regex is closed");
        src = me;
        last = (lua_Integer)me;
    }
    if (src < len)
        luaL_addlstring(&b, s + src, len - src);
    luaL_pushresult(&b);
    lua_pushinteger(L, n);
    return 2;
}

/* rx:names() -> array of the named groups' names in group-number order */
static int l_names(lua_State *L)
{
    lre *rx = check_re(L, 1, "re.names");
    uint32_t i, g;
    lua_Integer k = 0;

    lua_createtable(L, (int)rx->ncap, 0);          /* group number -> name */
    for (i = 0; i < rx->namecount; i++) {
        PCRE2_SPTR e = rx->nametable + (size_t)i * rx->nameentry;
        lua_pushstring(L, (const char *)e + 2);
        lua_rawseti(L, -2, ((lua_Integer)e[0] << 8) | e[1]);
    }
    lua_createtable(L, (int)rx->namecount, 0);
    for (g = 1; g <= rx->ncap; g++) {
        if (lua_rawgeti(L, -2, g) == LUA_TSTRING)
            lua_rawseti(L, -2, ++k);
        else
            lua_pop(L, 1);
    }
    return 1;
}

/* rx:ncaptures() -> number of capture groups */
static int l_ncaptures(lua_State *L)
{
    lre *rx = check_re(L, 1, "re.ncaptures");
    lua_pushinteger(L, rx->ncap);
    return 1;
}

/* rx:jit() -> true when the pattern was JIT-compiled */
static int l_jit(lua_State *L)
{
    lre *rx = check_re(L, 1, "re.jit");
    lua_pushboolean(L, rx->jit);
    return 1;
}

/* rx:close() -> true; frees the compiled pattern now (also __gc, __close). */
static int l_close(lua_State *L)
{
    lre *rx = luaL_testudata(L, 1, RE_REGEX);
    if (rx == NULL)
        return luaL_error(L, "re.close: bad self (" RE_REGEX " expected, got %s)",
                          luaL_typename(L, 1));
    re_release(rx);
    lua_pushboolean(L, 1);
    return 1;
}

/* tostring(rx) -> 're.regex("PATTERN", "FLAGS")' (escaped) | "re.regex (closed)" */
static int l_tostring(lua_State *L)
{
    lre *rx = luaL_checkudata(L, 1, RE_REGEX);
    luaL_Buffer b;
    size_t plen, flen;
    const char *p, *f;

    if (rx->closed) {
        lua_pushliteral(L, "re.regex (closed)");
        return 1;
    }
    lua_getiuservalue(L, 1, 1);
    lua_getiuservalue(L, 1, 2);
    p = lua_tolstring(L, -2, &plen);
    f = lua_tolstring(L, -1, &flen);
    luaL_buffinit(L, &b);
    luaL_addstring(&b, "re.regex(\"");
    add_escaped(&b, p, plen);
    luaL_addstring(&b, "\", \"");
    luaL_addlstring(&b, f, flen);
    luaL_addstring(&b, "\")");
    luaL_pushresult(&b);
    return 1;
}

static const luaL_Reg re_methods[] = {
    {"match", l_match},
    {"find", l_find},
    {"exec", l_exec},
    {"gmatch", l_gmatch},
    {"gsub", l_gsub},
    {"names", l_names},
    {"ncaptures", l_ncaptures},
    {"jit", l_jit},
    {"close", l_close},
    {NULL, NULL},
};

static const luaL_Reg re_meta[] = {
    {"__gc", l_close},
    {"__close", l_close},
    {"__tostring", l_tostring},
    {"__index", NULL},
    {NULL, NULL},
};

static const luaL_Reg re_funcs[] = {
    {"compile", l_compile},
    {NULL, NULL},
};

/* __gc of the shared match context. */
static int jitctx_gc(lua_State *L)
{
    /* Not luaL_checkudata: the registry key RE_JITCTX holds the instance, not the metatable. */
    re_jitctx *j = lua_touserdata(L, 1);
    pcre2_match_context_free(j->mctx);
    pcre2_jit_stack_free(j->stack);
    j->mctx = NULL;
    j->stack = NULL;
    return 0;
}

/* Creates the state's shared match context with its JIT stack, once. Without memory for
 * it, regexes use PCRE2's defaults. A non-empty LPROC_RE_NOJIT other than "0" turns the
 * JIT off: its SIMD code reads past the end of subjects (harmlessly, within the page),
 * which valgrind reports. */
static void jitctx_init(lua_State *L)
{
    re_jitctx *j;

    if (lua_getfield(L, LUA_REGISTRYINDEX, RE_JITCTX) != LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    lua_pop(L, 1);
    j = lua_newuserdatauv(L, sizeof *j, 0);
    j->mctx = NULL;
    j->stack = NULL;
    j->nojit = lproc_nojit();
    luaL_newmetatable(L, RE_JITCTX);
    lua_pushcfunction(L, jitctx_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    j->mctx = pcre2_match_context_create(NULL);
    j->stack = pcre2_jit_stack_create(RE_JIT_STACK_START, RE_JIT_STACK_MAX, NULL);
    if (j->mctx != NULL) {
        pcre2_set_heap_limit(j->mctx, RE_HEAP_LIMIT_KB);
        if (j->stack != NULL)
            pcre2_jit_stack_assign(j->mctx, NULL, j->stack);
    }
    lua_setfield(L, LUA_REGISTRYINDEX, RE_JITCTX);
}

int luaopen_lproc_re(lua_State *L)
{
    jitctx_init(L);
    luaL_newmetatable(L, RE_REGEX);
    luaL_setfuncs(L, re_meta, 0);
    luaL_newlib(L, re_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    luaL_newlib(L, re_funcs);
    return 1;
}
