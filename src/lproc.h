/*
 * lproc.h - what the host and the bindings share.
 *
 * Every binding lives in one file, src/lua_<name>.c, and exports only
 * luaopen_lproc_<name>. A few bindings also offer a small C API to other
 * bindings (declared here), so the hot path never goes through Lua.
 */
#ifndef LPROC_H
#define LPROC_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>
#include <lauxlib.h>

#define LPROC_VERSION "0.1.0"

/* ---- shared helpers (lproc.c) ---- */

/* Registers the metatable `name` of a handle type: __index = methods, __gc = __close =
 * close, __tostring = tostring. */
void lproc_newclass(lua_State *L, const char *name, const luaL_Reg *methods,
                    lua_CFunction close, lua_CFunction tostring);

/* 1 when regexes must not be JIT-compiled (LPROC_RE_NOJIT, for valgrind). */
int lproc_nojit(void);

/* Writes v in decimal to dst (room: 20 bytes, no NUL); returns the length. */
size_t lproc_fmt_int(char *dst, long long v);

/* ---- sha256 (lua_sha256.c) ---- */

/* A piece of input for lproc_sha256_hex. */
typedef struct lproc_slice {
    const char *p;
    size_t len;
} lproc_slice;

/* Hex SHA-256 of the concatenation of n slices into out (64 chars + NUL).
 * Returns 0, or -1 if OpenSSL failed. Not thread-safe (reuses one context). */
int lproc_sha256_hex(const lproc_slice *parts, int n, char out[65]);

/* ---- geoip (lua_geoip.c) ---- */

/* The answer of one lookup. Pointers refer to memory owned by the database
 * (memory-mapped) or its cache; they stay valid while the database is open. */
typedef struct lproc_geo {
    const char *country_code; size_t country_code_len;   /* NULL when unknown */
    const char *country;      size_t country_len;
    const char *city;         size_t city_len;
} lproc_geo;

typedef struct lproc_geoip lproc_geoip;

/* The open database at stack index idx (type lproc.geoip.db); raises otherwise. */
lproc_geoip *lproc_geoip_check(lua_State *L, int idx);

/* Looks ip (not NUL-terminated, len bytes) up. Fills *out and returns 1 when
 * the database knows the address, 0 when it does not (private, reserved,
 * unknown), -1 when ip is not an IPv4/IPv6 address. Uses the database's cache. */
int lproc_geoip_find(lproc_geoip *db, const char *ip, size_t len, lproc_geo *out);

#endif
