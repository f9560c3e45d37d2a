/*
 * lua_geoip.c - lproc.geoip: country and city lookups in MaxMind DB (.mmdb) files.
 *
 *   local geoip = require "lproc.geoip"
 *   local db = assert(geoip.open("build/country.mmdb"))
 *   local cc, country, city = db:lookup("8.8.8.8")    --> "US", "United States", nil
 *
 * A database is memory-mapped once (MMDB_MODE_MMAP). Lookups parse the address with
 * inet_pton and walk the tree with MMDB_lookup_sockaddr (no getaddrinfo). Answers are
 * pointers into the mapped data, kept in a per-database cache keyed by the address text:
 * a 2-way set-associative table of GEO_CACHE_SETS * 2 entries with one MRU bit per set,
 * because access logs repeat addresses heavily. Addresses that are not IPs are not cached.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include <maxminddb.h>

#include "lproc.h"

#define GEOIP_DB "lproc.geoip.db"
#define GEO_CACHE_SETS 2048          /* power of two; 4096 entries in all */
#define GEO_KEY_MAX 45               /* longest textual IPv6 address (INET6_ADDRSTRLEN - 1) */

/* One cached answer: the address text and what lproc_geoip_find returned for it. */
typedef struct geo_entry {
    lproc_geo geo;
    unsigned char keylen;            /* 0: empty slot */
    unsigned char found;             /* 1 known, 0 unknown */
    char key[GEO_KEY_MAX];
} geo_entry;

struct lproc_geoip {
    MMDB_s mmdb;
    int closed;
    geo_entry *cache;                /* GEO_CACHE_SETS * 2 entries, way w of set s at 2*s+w */
    unsigned char *mru;              /* per set: the way used last */
};

/* Paths read from each record. */
static const char *const path_cc[] = {"country", "iso_code", NULL};
static const char *const path_name[] = {"country", "names", "en", NULL};
static const char *const path_country[] = {"country", NULL};
static const char *const path_rcc[] = {"registered_country", "iso_code", NULL};
static const char *const path_rname[] = {"registered_country", "names", "en", NULL};
static const char *const path_city[] = {"city", "names", "en", NULL};

/* Releases the database and its cache; safe on a closed handle. */
static void geo_release(lproc_geoip *db)
{
    if (db->closed)
        return;
    db->closed = 1;
    MMDB_close(&db->mmdb);
    free(db->cache);
    free(db->mru);
    db->cache = NULL;
    db->mru = NULL;
}

/* The handle at idx for method fname; raises on a wrong type or a closed handle. */
static lproc_geoip *check_db(lua_State *L, int idx, const char *fname)
{
    lproc_geoip *db = luaL_testudata(L, idx, GEOIP_DB);
    if (db == NULL)
        luaL_error(L, "%s: bad self (" GEOIP_DB " expected, got %s)", fname,
                   luaL_typename(L, idx));
    else if (db->closed)
        luaL_error(L, "%s: db is closed", fname);
    return db;
}

/* C API (lproc.h): the open database at idx; raises otherwise. */
lproc_geoip *lproc_geoip_check(lua_State *L, int idx)
{
    return check_db(L, idx, "geoip");
}

/* Reads the UTF-8 string at path in entry into *p and *len; leaves them NULL and 0 when absent. */
static void get_string(MMDB_entry_s *entry, const char *const *path, const char **p, size_t *len)
{
    MMDB_entry_data_s data;

    *p = NULL;
    *len = 0;
    if (MMDB_aget_value(entry, &data, path) == MMDB_SUCCESS && data.has_data
        && data.type == MMDB_DATA_TYPE_UTF8_STRING) {
        *p = data.utf8_string;
        *len = data.data_size;
    }
}

/* Looks the NUL-terminated address text buf up in the tree into *out. 1, 0 or -1. */
static int geo_resolve(lproc_geoip *db, const char *buf, lproc_geo *out)
{
    struct sockaddr_in6 sin6;
    struct sockaddr_in sin;
    const struct sockaddr *sa;
    MMDB_lookup_result_s res;
    MMDB_entry_data_s data;
    int err = MMDB_SUCCESS;

    if (strchr(buf, ':') != NULL) {
        memset(&sin6, 0, sizeof sin6);
        sin6.sin6_family = AF_INET6;
        if (inet_pton(AF_INET6, buf, &sin6.sin6_addr) != 1)
            return -1;
        sa = (const struct sockaddr *)&sin6;
    } else {
        memset(&sin, 0, sizeof sin);
        sin.sin_family = AF_INET;
        if (inet_pton(AF_INET, buf, &sin.sin_addr) != 1)
            return -1;
        sa = (const struct sockaddr *)&sin;
    }
    memset(out, 0, sizeof *out);
    res = MMDB_lookup_sockaddr(&db->mmdb, sa, &err);
    if (err != MMDB_SUCCESS || !res.found_entry)
        return 0;
    get_string(&res.entry, path_cc, &out->country_code, &out->country_code_len);
    get_string(&res.entry, path_name, &out->country, &out->country_len);
    if (out->country_code == NULL && out->country == NULL
        && !(MMDB_aget_value(&res.entry, &data, path_country) == MMDB_SUCCESS
             && data.has_data)) {
        get_string(&res.entry, path_rcc, &out->country_code, &out->country_code_len);
        get_string(&res.entry, path_rname, &out->country, &out->country_len);
    }
    get_string(&res.entry, path_city, &out->city, &out->city_len);
    return 1;
}

/* C API (lproc.h): looks ip (len bytes) up through the cache. 1 found, 0 unknown,
 * -1 not an IP address. A closed database knows nothing (0). */
int lproc_geoip_find(lproc_geoip *db, const char *ip, size_t len, lproc_geo *out)
{
    char buf[GEO_KEY_MAX + 1];
    uint32_t h = 2166136261u;
    size_t i, set;
    geo_entry *e;
    int way, r;

    memset(out, 0, sizeof *out);
    if (db == NULL || db->closed)
        return 0;
    if (len == 0 || len > GEO_KEY_MAX)
        return -1;
    for (i = 0; i < len; i++)
        h = (h ^ (unsigned char)ip[i]) * 16777619u;
    set = h & (GEO_CACHE_SETS - 1);
    for (way = 0; way < 2; way++) {
        e = &db->cache[2 * set + way];
        if (e->keylen == len && memcmp(e->key, ip, len) == 0) {
            db->mru[set] = (unsigned char)way;
            *out = e->geo;
            return e->found;
        }
    }
    if (memchr(ip, '\0', len) != NULL)
        return -1;
    memcpy(buf, ip, len);
    buf[len] = '\0';
    r = geo_resolve(db, buf, out);
    if (r < 0)
        return -1;
    way = !db->mru[set];
    e = &db->cache[2 * set + way];
    e->geo = *out;
    e->keylen = (unsigned char)len;
    e->found = (unsigned char)r;
    memcpy(e->key, ip, len);
    db->mru[set] = (unsigned char)way;
    return r;
}

/* geoip.open(path) -> db | nil, "geoip.open: PATH: reason" */
static int l_open(lua_State *L)
{
    size_t len;
    const char *path;
    lproc_geoip *db;
    int status, saved;

    if (lua_type(L, 1) != LUA_TSTRING)
        return luaL_error(L, "geoip.open: bad argument #1 (string expected, got %s)",
                          luaL_typename(L, 1));
    path = lua_tolstring(L, 1, &len);
    if (strlen(path) != len)
        return luaL_error(L, "geoip.open: bad argument #1 (path contains a NUL byte)");
    db = lua_newuserdatauv(L, sizeof *db, 1);
    memset(db, 0, sizeof *db);
    db->closed = 1;
    luaL_setmetatable(L, GEOIP_DB);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);

    errno = 0;
    status = MMDB_open(path, MMDB_MODE_MMAP, &db->mmdb);
    saved = errno;
    if (status != MMDB_SUCCESS) {
        const char *why = MMDB_strerror(status);
        if ((status == MMDB_FILE_OPEN_ERROR || status == MMDB_IO_ERROR) && saved != 0)
            why = strerror(saved);
        lua_pushnil(L);
        lua_pushfstring(L, "geoip.open: %s: %s", path, why);
        return 2;
    }
    db->closed = 0;
    db->cache = calloc(2 * GEO_CACHE_SETS, sizeof *db->cache);
    db->mru = calloc(GEO_CACHE_SETS, 1);
    if (db->cache == NULL || db->mru == NULL) {
        geo_release(db);
        lua_pushnil(L);
        lua_pushfstring(L, "geoip.open: %s: not enough memory", path);
        return 2;
    }
    return 1;
}

/* db:lookup(ip) -> country_code, country_name, city (each nil when absent) | nil */
static int l_lookup(lua_State *L)
{
    lproc_geoip *db = check_db(L, 1, "geoip.lookup");
    lproc_geo g;
    size_t len;
    const char *ip;

    if (lua_type(L, 2) != LUA_TSTRING)
        return luaL_error(L, "geoip.lookup: bad argument #1 (string expected, got %s)",
                          luaL_typename(L, 2));
    ip = lua_tolstring(L, 2, &len);
    if (lproc_geoip_find(db, ip, len, &g) != 1) {
        lua_pushnil(L);
        return 1;
    }
    if (g.country_code != NULL) lua_pushlstring(L, g.country_code, g.country_code_len);
    else lua_pushnil(L);
    if (g.country != NULL) lua_pushlstring(L, g.country, g.country_len);
    else lua_pushnil(L);
    if (g.city != NULL) lua_pushlstring(L, g.city, g.city_len);
    else lua_pushnil(L);
    return 3;
}

/* db:metadata() -> {database_type=, build_epoch=, ip_version=, node_count=, record_size=,
 * languages={...}, description=} (description: the "en" one, else the first, else absent) */
static int l_metadata(lua_State *L)
{
    lproc_geoip *db = check_db(L, 1, "geoip.metadata");
    const MMDB_metadata_s *m = &db->mmdb.metadata;
    const char *desc = NULL;
    size_t i;

    lua_createtable(L, 0, 7);
    lua_pushstring(L, m->database_type != NULL ? m->database_type : "");
    lua_setfield(L, -2, "database_type");
    lua_pushinteger(L, (lua_Integer)m->build_epoch);
    lua_setfield(L, -2, "build_epoch");
    lua_pushinteger(L, m->ip_version);
    lua_setfield(L, -2, "ip_version");
    lua_pushinteger(L, m->node_count);
    lua_setfield(L, -2, "node_count");
    lua_pushinteger(L, m->record_size);
    lua_setfield(L, -2, "record_size");
    lua_createtable(L, (int)m->languages.count, 0);
    for (i = 0; i < m->languages.count; i++) {
        lua_pushstring(L, m->languages.names[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "languages");
    for (i = 0; i < m->description.count; i++) {
        const MMDB_description_s *d = m->description.descriptions[i];
        if (d == NULL || d->description == NULL)
            continue;
        if (desc == NULL || (d->language != NULL && strcmp(d->language, "en") == 0))
            desc = d->description;
    }
    if (desc != NULL) {
        lua_pushstring(L, desc);
        lua_setfield(L, -2, "description");
    }
    return 1;
}

/* db:close() -> true; also __gc and __close. Safe to call twice. */
static int l_close(lua_State *L)
{
    lproc_geoip *db = luaL_testudata(L, 1, GEOIP_DB);
    if (db == NULL)
        return luaL_error(L, "geoip.close: bad self (" GEOIP_DB " expected, got %s)",
                          luaL_typename(L, 1));
    geo_release(db);
    lua_pushboolean(L, 1);
    return 1;
}

/* tostring(db) -> "geoip.db (PATH)" | "geoip.db (closed)" */
static int l_tostring(lua_State *L)
{
    lproc_geoip *db = luaL_checkudata(L, 1, GEOIP_DB);
    if (db->closed) {
        lua_pushliteral(L, "geoip.db (closed)");
    } else {
        lua_getiuservalue(L, 1, 1);
        lua_pushfstring(L, "geoip.db (%s)", lua_tostring(L, -1));
    }
    return 1;
}

static const luaL_Reg db_methods[] = {
    {"lookup", l_lookup},
    {"metadata", l_metadata},
    {"close", l_close},
    {NULL, NULL},
};

static const luaL_Reg db_meta[] = {
    {"__gc", l_close},
    {"__close", l_close},
    {"__tostring", l_tostring},
    {"__index", NULL},
    {NULL, NULL},
};

static const luaL_Reg geoip_funcs[] = {
    {"open", l_open},
    {NULL, NULL},
};

int luaopen_lproc_geoip(lua_State *L)
{
    luaL_newmetatable(L, GEOIP_DB);
    luaL_setfuncs(L, db_meta, 0);
    luaL_newlib(L, db_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    luaL_newlib(L, geoip_funcs);
    return 1;
}
