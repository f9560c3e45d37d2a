/*
 * lua_sha256.c - lproc.sha256: SHA-256 hex digests through OpenSSL 3's EVP API.
 *
 *   local sha256 = require "lproc.sha256"
 *   sha256.hex("abc")            --> "ba7816bf..."
 *   sha256.hex("a", "b", 42)     --> the digest of "ab42"
 *   sha256.lineid(src, 42, line) --> the digest of src .. "\0" .. "42" .. "\0" .. line
 *   sha256.is_hex(s)             --> true when s has the form of these digests
 *
 * The digest is fetched once and one EVP_MD_CTX is reused for every call. Both
 * live in static storage: they are an immutable-per-process cache, created on
 * first use and never freed. Not thread-safe (lproc runs one Lua state per process).
 */
#include <openssl/evp.h>

#include "lproc.h"

static EVP_MD *sha_md;
static EVP_MD_CTX *sha_ctx;

/* Fetches the digest and creates the context on first use. 0 or -1. */
static int sha_init(void)
{
    if (sha_ctx != NULL)
        return 0;
    if (sha_md == NULL && (sha_md = EVP_MD_fetch(NULL, "SHA256", NULL)) == NULL)
        return -1;
    if ((sha_ctx = EVP_MD_CTX_new()) == NULL)
        return -1;
    return 0;
}

/* Starts a digest on the shared context. 0 or -1. */
static int sha_begin(void)
{
    if (sha_init() != 0)
        return -1;
    return EVP_DigestInit_ex2(sha_ctx, sha_md, NULL) == 1 ? 0 : -1;
}

/* Feeds len bytes at p to the digest started by sha_begin. 0 or -1. */
static int sha_update(const void *p, size_t len)
{
    if (len == 0)
        return 0;
    return EVP_DigestUpdate(sha_ctx, p, len) == 1 ? 0 : -1;
}

/* Finishes the digest into out as 64 lower-case hex digits and a NUL. 0 or -1. */
static int sha_end(char out[65])
{
    static const char hexdigits[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0, i;

    if (EVP_DigestFinal_ex(sha_ctx, md, &mdlen) != 1 || mdlen != 32)
        return -1;
    for (i = 0; i < 32; i++) {
        out[2 * i] = hexdigits[md[i] >> 4];
        out[2 * i + 1] = hexdigits[md[i] & 0x0f];
    }
    out[64] = '\0';
    return 0;
}

/* C API (lproc.h): hex SHA-256 of the concatenation of n slices. 0 or -1. */
int lproc_sha256_hex(const lproc_slice *parts, int n, char out[65])
{
    int i;

    if (sha_begin() != 0)
        return -1;
    for (i = 0; i < n; i++) {
        if (sha_update(parts[i].p, parts[i].len) != 0)
            return -1;
    }
    return sha_end(out);
}

/* sha256.hex(s1 [, s2, ...]) -> 64-char lower-case hex digest of the concatenation.
 * Numbers are converted like tostring; any other type raises. */
static int l_hex(lua_State *L)
{
    int n = lua_gettop(L), i;
    char out[65];

    if (n == 0)
        return luaL_error(L, "sha256.hex: bad argument #1 (string expected, got no value)");
    for (i = 1; i <= n; i++) {
        int t = lua_type(L, i);
        if (t != LUA_TSTRING && t != LUA_TNUMBER)
            return luaL_error(L, "sha256.hex: bad argument #%d (string expected, got %s)",
                              i, luaL_typename(L, i));
    }
    if (sha_begin() != 0)
        goto fail;
    for (i = 1; i <= n; i++) {
        size_t len;
        const char *s = lua_tolstring(L, i, &len);   /* converts numbers in place */
        if (sha_update(s, len) != 0)
            goto fail;
    }
    if (sha_end(out) != 0)
        goto fail;
    lua_pushlstring(L, out, 64);
    return 1;
fail:
    lua_pushnil(L);
    lua_pushliteral(L, "sha256.hex: OpenSSL SHA-256 failed");
    return 2;
}

/* sha256.lineid(source, offset, line) -> the id of a log line: the hex SHA-256 of
 * "source NUL offset NUL line", offset (an integer) in decimal. The same digest as
 * sha256.hex(source, "\0", offset, "\0", line), without making a string of the offset. */
static int l_lineid(lua_State *L)
{
    lproc_slice parts[3];
    char mid[22], out[65];

    parts[0].p = luaL_checklstring(L, 1, &parts[0].len);
    parts[2].p = luaL_checklstring(L, 3, &parts[2].len);
    if (!lua_isinteger(L, 2))
        return luaL_typeerror(L, 2, "integer");
    mid[0] = '\0';
    parts[1].len = 1 + lproc_fmt_int(mid + 1, (long long)lua_tointeger(L, 2));
    mid[parts[1].len++] = '\0';
    parts[1].p = mid;
    if (lproc_sha256_hex(parts, 3, out) != 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "sha256.lineid: OpenSSL SHA-256 failed");
        return 2;
    }
    lua_pushlstring(L, out, 64);
    return 1;
}

/* sha256.is_hex(s) -> true when s is 64 lower-case hex digits (the form hex and lineid
 * give), else false; any value that is not a string is false. A consumer checks every
 * message id this way, so it is done here rather than with a Lua pattern. */
static int l_is_hex(lua_State *L)
{
    size_t len, i;
    const char *s;
    int ok = 0;
    if (lua_type(L, 1) == LUA_TSTRING) {
        s = lua_tolstring(L, 1, &len);
        ok = len == 64;
        for (i = 0; ok && i < len; i++)
            ok = (s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f');
    }
    lua_pushboolean(L, ok);
    return 1;
}

static const luaL_Reg sha256_funcs[] = {
    {"hex", l_hex},
    {"lineid", l_lineid},
    {"is_hex", l_is_hex},
    {NULL, NULL},
};

int luaopen_lproc_sha256(lua_State *L)
{
    luaL_newlib(L, sha256_funcs);
    return 1;
}
