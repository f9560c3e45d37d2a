/*
 * lua_mysql.c - lproc.mysql: a MariaDB/MySQL client (MariaDB Connector/C) with the fast
 * multi-row INSERT the consumers need.
 *
 *   mysql.parse_url(url) -> {user, host, port, database, params}      (never the password)
 *   mysql.connect(url [, opts]) -> conn | nil, err, code
 *   mysql.batch(table, columns [, opts]) -> batch
 *   mysql.is_connection_error(code) -> boolean
 *   mysql.is_transient_error(code) -> boolean   (also locks, deadlocks, a read-only or full server)
 *   mysql.is_setup_error(code) -> boolean       (a missing table or column, a missing grant, ...)
 *   conn:execute(sql, ...) -> affected_rows, last_insert_id | nil, err, code
 *   conn:query(sql, ...) -> rows, columns | nil, err, code
 *   conn:query_one(sql, ...) -> row | nil | nil, err, code
 *   conn:insert(batch) -> affected_rows | nil, err, code
 *   conn:begin() conn:commit() conn:rollback() conn:ping() -> true | nil, err, code
 *   conn:escape(s) conn:server_version() conn:close()
 *   batch:add(v1, ..., vN) batch:count() batch:bytes() batch:clear() batch:close()
 *
 * URL: mysql://user:password@host:port/database?param=value&... (or mariadb://), percent-
 * decoded; default port 3306. Host "localhost" means a Unix socket (the default one unless
 * ?socket=/path), as in the mysql client; use 127.0.0.1 for TCP. Parameters (with - or _) and
 * opts (which win): connect_timeout (s, 10), read_timeout and write_timeout (s, 60: a hung
 * server gives error 2013), ssl_mode, ssl_ca, ssl_capath, ssl_cert, ssl_key, local_infile
 * (false), socket; opts also take password. ssl_mode: disabled; preferred (the default: TLS
 * when the server offers it); required (TLS or fail); verify_ca (TLS, chain checked against
 * ssl_ca/ssl_capath); verify_identity (also the host name). Whenever ssl_ca is given the
 * chain is checked. The session is utf8mb4, autocommit, without multi-statements and without
 * automatic reconnection (a reconnect is the caller's decision: is_connection_error).
 *
 * Errors: misuse (bad URL or option, wrong types, wrong value counts, closed handles) raises
 * "mysql.<function>: ..."; failures of the server or the network return nil,
 * "mysql.<function>: <server message> (<code>)", code. connect's messages name the target
 * ("mysql.connect: 127.0.0.1:3306: Access denied ... (1045)") and mask the password
 * wherever the server echoes it.
 *
 * Values (placeholders and batch rows) become SQL literals: string -> '...' with backslash
 * escapes (\0 \n \r \Z \\ \' \"), exact for every byte in a utf8mb4 session; integer -> decimal;
 * float -> %.17g (inf and nan raise); boolean -> 1/0; nil -> NULL. A `?` inside '...', "...",
 * `...` or a comment is not a placeholder. Backslash escapes need a session without
 * NO_BACKSLASH_ESCAPES: connect removes that mode, and sending values raises if it was set
 * again.
 *
 * Results: rows are tables keyed by column name (a later duplicate name wins), NULL absent.
 * Integer types -> integers, except BIGINT UNSIGNED above 2^63-1 -> its decimal string;
 * FLOAT, DOUBLE -> floats; DECIMAL -> a number (an integer when it has no fraction and fits,
 * else a float: CAST it to CHAR to keep more than 15 digits); everything else (text, blobs,
 * dates, BIT, JSON) -> a string with the exact bytes.
 *
 * Batches are independent of connections (a batch survives a reconnect). conn:insert sends
 * multi-row INSERTs of at most max_bytes each (default: the server's max_allowed_packet less
 * 4 KB, at most 16 MB; a single larger row goes alone, and a row larger than the server's
 * max_allowed_packet is not sent: the server would drop the connection, and a retry would
 * never end; it fails with ER_NET_PACKET_TOO_LARGE instead); run it in a transaction to make it
 * all-or-nothing. affected_rows sums MySQL's counts: 1 per inserted row, and with
 * on_duplicate 0 per existing row left unchanged, 2 per existing row updated.
 *
 * A batch made with {on_duplicate = "ignore", load = true} goes, on a connection opened with
 * local_infile, as one LOAD DATA LOCAL INFILE ... IGNORE (the server parses no SQL per row:
 * cheaper than INSERTs). Its text is served from memory by the connection's own handler, which
 * serves nothing else: a server asking for a file gets an error, never the file. It is all or
 * nothing (a savepoint in the caller's transaction, else a transaction of its own), and as
 * strict as an INSERT: any warning but a skipped duplicate rolls it back and is returned as
 * the error. Where the server refuses LOAD DATA LOCAL (local_infile off), the connection
 * sends its load batches as INSERTs from then on.
 */
#define _POSIX_C_SOURCE 200809L
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mysql.h>
#include <errmsg.h>
#include <mysqld_error.h>

#include "lproc.h"

#define CONN_MT  "lproc.mysql.connection"
#define BATCH_MT "lproc.mysql.batch"

#define DEFAULT_PORT       3306
#define MAX_STATEMENT      (16u * 1024 * 1024)   /* default cap of one INSERT statement */
#define PACKET_MARGIN      4096                   /* room kept below max_allowed_packet */
#define MIN_MAX_BYTES      256                    /* smallest max_bytes a batch accepts */
#define ER_LOCAL_FILES_DISABLED 3948              /* MySQL 8 with local_infile OFF (MariaDB:
                                                    4166, older servers: 1148) */

/* ---------------------------------------------------------------------------------------- */
/* SQL literals */

/* The character that follows the backslash when a byte must be escaped, 0 when it must not. */
static const char esc_map[256] = {
    [0] = '0', ['\n'] = 'n', ['\r'] = 'r', [0x1a] = 'Z',
    ['\\'] = '\\', ['\''] = '\'', ['"'] = '"',
};

/* Writes the escaped form of s[0..n) to dst (room: 2n); returns the bytes written. */
static size_t escape_to(char *dst, const char *s, size_t n)
{
    char *d = dst;
    size_t i;
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        char e = esc_map[ch];
        if (e != 0) {
            *d++ = '\\';
            *d++ = e;
        } else {
            *d++ = (char)ch;
        }
    }
    return (size_t)(d - dst);
}

/* Writes finite v as %.17g to dst (room: 32) with '.' as decimal point whatever the locale. */
static size_t format_float(char *dst, lua_Number v)
{
    int n = snprintf(dst, 32, "%.17g", (double)v);
    int i;
    for (i = 0; i < n; i++) {
        char ch = dst[i];
        if (!((ch >= '0' && ch <= '9') || ch == '-' || ch == '+' || ch == 'e' || ch == 'E'))
            dst[i] = '.';
    }
    return (size_t)n;
}

/* Raises "<fname>: bad value #<nth> (<why>)". */
static int value_error(lua_State *L, const char *fname, int nth, const char *why)
{
    return luaL_error(L, "%s: bad value #%d (%s)", fname, nth, why);
}

/* Upper bound of the bytes the value at idx takes as an SQL literal. Raises (naming fname and
 * the value's position nth) for a type that has no literal and for inf/nan. */
static size_t literal_max(lua_State *L, int idx, const char *fname, int nth)
{
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return 4;
    case LUA_TBOOLEAN:
        return 1;
    case LUA_TNUMBER:
        if (!lua_isinteger(L, idx) && !isfinite((double)lua_tonumber(L, idx)))
            value_error(L, fname, nth, "inf and nan have no SQL literal");
        return 32;
    case LUA_TSTRING: {
        size_t len;
        lua_tolstring(L, idx, &len);
        if (len > (SIZE_MAX - 8) / 2)
            value_error(L, fname, nth, "string too long");
        return 2 * len + 2;
    }
    default:
        lua_pushfstring(L, "string, number, boolean or nil expected, got %s",
                        luaL_typename(L, idx));
        value_error(L, fname, nth, lua_tostring(L, -1));
        return 0;
    }
}

/* Writes the literal of the value at idx (already checked by literal_max) to dst. */
static size_t literal_write(lua_State *L, int idx, char *dst)
{
    switch (lua_type(L, idx)) {
    case LUA_TBOOLEAN:
        dst[0] = lua_toboolean(L, idx) ? '1' : '0';
        return 1;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            return lproc_fmt_int(dst, (long long)lua_tointeger(L, idx));
        return format_float(dst, lua_tonumber(L, idx));
    case LUA_TSTRING: {
        size_t len, n;
        const char *s = lua_tolstring(L, idx, &len);
        dst[0] = '\'';
        n = 1 + escape_to(dst + 1, s, len);
        dst[n++] = '\'';
        return n;
    }
    default:
        memcpy(dst, "NULL", 4);
        return 4;
    }
}

/* Index of the next `?` placeholder in sql[i..n), or n. Skips '...', "..." and `...` quoted
 * text and comments (-- , #, slash-star), so a `?` there is not a placeholder. Must be called
 * with i outside any quoted text or comment (0, or just after a placeholder). */
static size_t next_placeholder(const char *sql, size_t n, size_t i)
{
    while (i < n) {
        char ch = sql[i];
        if (ch == '?')
            return i;
        if (ch == '\'' || ch == '"' || ch == '`') {
            for (i++; i < n && sql[i] != ch; i++)
                if (sql[i] == '\\' && ch != '`')
                    i++;
            i++;   /* past the closing quote; a doubled quote just opens the next run */
        } else if (ch == '#' || (ch == '-' && i + 1 < n && sql[i + 1] == '-'
                                 && (i + 2 == n || (unsigned char)sql[i + 2] <= ' '))) {
            while (i < n && sql[i] != '\n')
                i++;
        } else if (ch == '/' && i + 1 < n && sql[i + 1] == '*') {
            for (i += 2; i < n && !(sql[i] == '*' && i + 1 < n && sql[i + 1] == '/'); i++)
                ;
            i += 2;
        } else {
            i++;
        }
    }
    return n;
}

/* ---------------------------------------------------------------------------------------- */
/* URLs */

/* The value of the hex digit c, or -1. */
static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Pushes the percent-decoded s[0..n); raises "<fname>: invalid URL: bad percent-encoding in
 * <part>" (the text itself is never shown: it may be a password). */
static void push_decoded(lua_State *L, const char *s, size_t n, const char *fname,
                         const char *part)
{
    luaL_Buffer b;
    size_t i;
    char *d = luaL_buffinitsize(L, &b, n);
    size_t k = 0;
    for (i = 0; i < n; i++) {
        if (s[i] == '%') {
            int hi = i + 2 < n ? hexval(s[i + 1]) : -1, lo = i + 2 < n ? hexval(s[i + 2]) : -1;
            if (hi < 0 || lo < 0)
                luaL_error(L, "%s: invalid URL: bad percent-encoding in %s", fname, part);
            d[k++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            d[k++] = s[i];
        }
    }
    luaL_pushresultsize(&b, k);
}

/* Offset of the first byte of s[0..n) that is in set (NUL never is), or n. */
static size_t find_any(const char *s, size_t n, const char *set)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (s[i] != '\0' && strchr(set, s[i]) != NULL)
            return i;
    return n;
}

/* Parses mysql://[user[:password]@]host[:port][/database][?k=v&...] (also mariadb://) and
 * pushes {user=, password=, host=, port=, database=, params={}}; absent parts are absent.
 * Raises "<fname>: invalid URL: <why>"; never quotes the URL (it may hold a password). */
static void parse_url(lua_State *L, const char *url, size_t len, const char *fname)
{
    const char *p, *end = url + len, *auth_end, *host, *host_end, *at = NULL, *q;
    size_t skip = 0;
    long port = DEFAULT_PORT;

    if (len >= 8 && memcmp(url, "mysql://", 8) == 0)
        skip = 8;
    else if (len >= 10 && memcmp(url, "mariadb://", 10) == 0)
        skip = 10;
    else
        luaL_error(L, "%s: invalid URL: it must start with mysql://", fname);
    p = url + skip;
    auth_end = p + find_any(p, (size_t)(end - p), "/?#");
    for (q = p; q < auth_end; q++)
        if (*q == '@')
            at = q;

    lua_createtable(L, 0, 6);
    if (at != NULL) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *user_end = colon != NULL ? colon : at;
        push_decoded(L, p, (size_t)(user_end - p), fname, "the user");
        lua_setfield(L, -2, "user");
        if (colon != NULL) {
            push_decoded(L, colon + 1, (size_t)(at - colon - 1), fname, "the password");
            lua_setfield(L, -2, "password");
        }
        p = at + 1;
    }

    if (p < auth_end && *p == '[') {
        host = p + 1;
        host_end = memchr(host, ']', (size_t)(auth_end - host));
        if (host_end == NULL)
            luaL_error(L, "%s: invalid URL: unterminated [ in the host", fname);
        p = host_end + 1;
        if (p < auth_end && *p != ':')
            luaL_error(L, "%s: invalid URL: unexpected text after ]", fname);
    } else {
        const char *colon = p < auth_end ? memchr(p, ':', (size_t)(auth_end - p)) : NULL;
        host = p;
        host_end = colon != NULL ? colon : auth_end;
        p = host_end;
    }
    if (host_end == host)
        luaL_error(L, "%s: invalid URL: missing host", fname);
    push_decoded(L, host, (size_t)(host_end - host), fname, "the host");
    lua_setfield(L, -2, "host");
    if (p < auth_end) {   /* p at ':' */
        port = 0;
        if (p + 1 == auth_end)
            luaL_error(L, "%s: invalid URL: empty port", fname);
        for (q = p + 1; q < auth_end; q++) {
            if (*q < '0' || *q > '9' || port > 65535)
                luaL_error(L, "%s: invalid URL: bad port", fname);
            port = port * 10 + (*q - '0');
        }
        if (port < 1 || port > 65535)
            luaL_error(L, "%s: invalid URL: bad port", fname);
    }
    lua_pushinteger(L, port);
    lua_setfield(L, -2, "port");

    p = auth_end;
    if (p < end && *p == '/') {
        const char *db = p + 1, *db_end = db + find_any(db, (size_t)(end - db), "?#");
        if (db_end > db) {
            push_decoded(L, db, (size_t)(db_end - db), fname, "the database");
            lua_setfield(L, -2, "database");
        }
        p = db_end;
    }

    lua_newtable(L);
    if (p < end && *p == '?') {
        const char *qend = p + 1 + find_any(p + 1, (size_t)(end - p - 1), "#");
        p++;
        while (p < qend) {
            const char *amp = p + find_any(p, (size_t)(qend - p), "&");
            if (amp > p) {
                const char *eq = memchr(p, '=', (size_t)(amp - p));
                push_decoded(L, p, (size_t)((eq != NULL ? eq : amp) - p), fname,
                             "a parameter name");
                if (eq != NULL)
                    push_decoded(L, eq + 1, (size_t)(amp - eq - 1), fname, "a parameter");
                else
                    lua_pushliteral(L, "");
                lua_rawset(L, -3);
            }
            p = amp + (amp < qend);
        }
    }
    lua_setfield(L, -2, "params");
}

/* mysql.parse_url(url) -> {user, host, port, database, params} (never the password) */
static int l_parse_url(lua_State *L)
{
    size_t len;
    const char *url = luaL_checklstring(L, 1, &len);
    parse_url(L, url, len, "mysql.parse_url");
    lua_pushnil(L);
    lua_setfield(L, -2, "password");
    return 1;
}

/* ---------------------------------------------------------------------------------------- */
/* Connections */

typedef struct conn {
    MYSQL *mysql;           /* NULL when closed */
    MYSQL_RES *res;         /* a result being converted (freed on the next call or close) */
    size_t max_packet;      /* the server's max_allowed_packet */
    int infile;             /* opened with local_infile: load batches use LOAD DATA LOCAL */
    int no_load;            /* the server refused LOAD DATA LOCAL: load batches use INSERT */
    const char *feed;       /* the text a LOAD DATA LOCAL in progress reads, else NULL */
    size_t feed_len, feed_pos;
} conn;

/* Frees the connection's result and closes it; safe twice. */
static void conn_shut(conn *c)
{
    if (c->res != NULL) {
        mysql_free_result(c->res);
        c->res = NULL;
    }
    if (c->mysql != NULL) {
        mysql_close(c->mysql);
        c->mysql = NULL;
    }
}

/* The connection at index 1, which must be open; raises "<fname>: connection is closed". */
static conn *check_open(lua_State *L, const char *fname)
{
    conn *c = luaL_checkudata(L, 1, CONN_MT);
    if (c->mysql == NULL)
        luaL_error(L, "%s: connection is closed", fname);
    if (c->res != NULL) {
        mysql_free_result(c->res);
        c->res = NULL;
    }
    return c;
}

/* Pushes nil, "<fname>: <server message> (<code>)", code; returns 3. */
static int push_error(lua_State *L, conn *c, const char *fname)
{
    unsigned int code = mysql_errno(c->mysql);
    luaL_pushfail(L);
    lua_pushfstring(L, "%s: %s (%d)", fname, mysql_error(c->mysql), (int)code);
    lua_pushinteger(L, (lua_Integer)code);
    return 3;
}

/* Raises unless the session lets backslash escapes through string literals. */
static void check_escaping(lua_State *L, conn *c, const char *fname)
{
    unsigned int status = 0;
    if (mariadb_get_infov(c->mysql, MARIADB_CONNECTION_SERVER_STATUS, &status) == 0
        && (status & SERVER_STATUS_NO_BACKSLASH_ESCAPES) != 0)
        luaL_error(L, "%s: the session's sql_mode has NO_BACKSLASH_ESCAPES; values cannot be "
                      "sent", fname);
}

/* Sends sql with the values at stack indices first..first+nvals-1 in place of its `?`s.
 * Raises on a count mismatch or a bad value; returns mysql_real_query's result. */
static int run_sql(lua_State *L, conn *c, const char *sql, size_t n, int first, int nvals,
                   const char *fname)
{
    size_t i, count = 0, need;
    luaL_Buffer b;
    int k;

    for (i = next_placeholder(sql, n, 0); i < n; i = next_placeholder(sql, n, i + 1))
        count++;
    if (count != (size_t)nvals)
        luaL_error(L, "%s: %d placeholders but %d values", fname, (int)count, nvals);
    if (nvals == 0)
        return mysql_real_query(c->mysql, sql, (unsigned long)n);

    check_escaping(L, c, fname);
    need = n;
    for (k = 0; k < nvals; k++)
        need += literal_max(L, first + k, fname, k + 1);
    luaL_buffinitsize(L, &b, need);
    i = 0;
    for (k = 0; k < nvals; k++) {
        size_t q = next_placeholder(sql, n, i), room;
        luaL_addlstring(&b, sql + i, q - i);
        room = literal_max(L, first + k, fname, k + 1);
        luaL_addsize(&b, literal_write(L, first + k, luaL_prepbuffsize(&b, room)));
        i = q + 1;
    }
    luaL_addlstring(&b, sql + i, n - i);
    /* sent from the buffer itself (no copy); it is dropped with the stack on return */
    return mysql_real_query(c->mysql, luaL_buffaddr(&b), (unsigned long)luaL_bufflen(&b));
}

/* Pushes the value of field f (not NULL, len bytes at v, NUL-terminated by the library):
 * integer types -> integer (BIGINT UNSIGNED above 2^63-1 -> decimal string), FLOAT, DOUBLE ->
 * float, DECIMAL -> number (integer when it has no fraction and fits), else the exact bytes. */
static void push_field(lua_State *L, const MYSQL_FIELD *f, const char *v, unsigned long len)
{
    switch (f->type) {
    case MYSQL_TYPE_TINY: case MYSQL_TYPE_SHORT: case MYSQL_TYPE_INT24:
    case MYSQL_TYPE_LONG: case MYSQL_TYPE_LONGLONG: case MYSQL_TYPE_YEAR:
        if ((f->flags & UNSIGNED_FLAG) != 0) {
            unsigned long long u = strtoull(v, NULL, 10);
            if (u > (unsigned long long)LUA_MAXINTEGER)
                lua_pushlstring(L, v, len);
            else
                lua_pushinteger(L, (lua_Integer)u);
        } else {
            lua_pushinteger(L, (lua_Integer)strtoll(v, NULL, 10));
        }
        return;
    case MYSQL_TYPE_FLOAT: case MYSQL_TYPE_DOUBLE:
        if (lua_stringtonumber(L, v) == 0) {
            lua_pushlstring(L, v, len);
        } else if (lua_isinteger(L, -1)) {   /* "3" from a DOUBLE is still a float */
            lua_Number x = (lua_Number)lua_tointeger(L, -1);
            lua_pop(L, 1);
            lua_pushnumber(L, x);
        }
        return;
    case MYSQL_TYPE_DECIMAL: case MYSQL_TYPE_NEWDECIMAL:
        if (lua_stringtonumber(L, v) == 0)
            lua_pushlstring(L, v, len);
        return;
    default:
        lua_pushlstring(L, v, len);
        return;
    }
}

/* After a successful query: pushes rows, columns (limit 0: all rows) or, when one_row, the
 * first row or nil. Returns the number of results, or push_error's. */
static int push_result(lua_State *L, conn *c, int one_row, const char *fname)
{
    MYSQL_RES *res;
    MYSQL_FIELD *fields;
    MYSQL_ROW row;
    unsigned int nf, i;
    int base, cols, rows;
    lua_Integer r = 0;
    my_ulonglong nrows;

    res = mysql_store_result(c->mysql);
    if (res == NULL) {
        if (mysql_field_count(c->mysql) != 0)
            return push_error(L, c, fname);
        if (one_row) {
            lua_pushnil(L);
            return 1;
        }
        lua_newtable(L);
        lua_newtable(L);
        return 2;
    }
    c->res = res;   /* freed by close or the next call if a Lua error interrupts us */
    nf = mysql_num_fields(res);
    fields = mysql_fetch_fields(res);
    nrows = mysql_num_rows(res);
    luaL_checkstack(L, (int)nf + 8, "too many columns");
    base = lua_gettop(L);
    for (i = 0; i < nf; i++)
        lua_pushlstring(L, fields[i].name, fields[i].name_length);
    lua_createtable(L, (int)nf, 0);
    cols = lua_gettop(L);
    for (i = 0; i < nf; i++) {
        lua_pushvalue(L, base + 1 + (int)i);
        lua_rawseti(L, cols, (lua_Integer)i + 1);
    }
    lua_createtable(L, one_row ? 0 : (nrows > INT_MAX ? INT_MAX : (int)nrows), 0);
    rows = lua_gettop(L);
    while ((row = mysql_fetch_row(res)) != NULL) {
        unsigned long *lens = mysql_fetch_lengths(res);
        lua_createtable(L, 0, (int)nf);
        for (i = 0; i < nf; i++) {
            if (row[i] == NULL)
                continue;
            lua_pushvalue(L, base + 1 + (int)i);
            push_field(L, &fields[i], row[i], lens[i]);
            lua_rawset(L, -3);
        }
        lua_rawseti(L, rows, ++r);
        if (one_row)
            break;
    }
    mysql_free_result(res);
    c->res = NULL;
    if (one_row) {
        lua_rawgeti(L, rows, 1);
        return 1;
    }
    lua_pushvalue(L, cols);
    return 2;
}

/* conn:execute(sql, ...) -> affected_rows, last_insert_id | nil, err, code
 * (a statement that returns rows gives the number of rows, 0) */
static int c_execute(lua_State *L)
{
    conn *c = check_open(L, "mysql.execute");
    size_t n;
    const char *sql = luaL_checklstring(L, 2, &n);
    if (run_sql(L, c, sql, n, 3, lua_gettop(L) - 2, "mysql.execute") != 0)
        return push_error(L, c, "mysql.execute");
    if (mysql_field_count(c->mysql) != 0) {
        MYSQL_RES *res = mysql_store_result(c->mysql);
        if (res == NULL)
            return push_error(L, c, "mysql.execute");
        lua_pushinteger(L, (lua_Integer)mysql_num_rows(res));
        lua_pushinteger(L, 0);
        mysql_free_result(res);
        return 2;
    }
    lua_pushinteger(L, (lua_Integer)mysql_affected_rows(c->mysql));
    lua_pushinteger(L, (lua_Integer)mysql_insert_id(c->mysql));
    return 2;
}

/* conn:query(sql, ...) -> rows, columns | nil, err, code */
static int c_query(lua_State *L)
{
    conn *c = check_open(L, "mysql.query");
    size_t n;
    const char *sql = luaL_checklstring(L, 2, &n);
    if (run_sql(L, c, sql, n, 3, lua_gettop(L) - 2, "mysql.query") != 0)
        return push_error(L, c, "mysql.query");
    return push_result(L, c, 0, "mysql.query");
}

/* conn:query_one(sql, ...) -> first row | nil | nil, err, code */
static int c_query_one(lua_State *L)
{
    conn *c = check_open(L, "mysql.query_one");
    size_t n;
    const char *sql = luaL_checklstring(L, 2, &n);
    if (run_sql(L, c, sql, n, 3, lua_gettop(L) - 2, "mysql.query_one") != 0)
        return push_error(L, c, "mysql.query_one");
    return push_result(L, c, 1, "mysql.query_one");
}

/* conn:begin() -> true | nil, err, code */
static int c_begin(lua_State *L)
{
    conn *c = check_open(L, "mysql.begin");
    if (mysql_real_query(c->mysql, "START TRANSACTION", 17) != 0)
        return push_error(L, c, "mysql.begin");
    lua_pushboolean(L, 1);
    return 1;
}

/* conn:commit() -> true | nil, err, code */
static int c_commit(lua_State *L)
{
    conn *c = check_open(L, "mysql.commit");
    if (mysql_commit(c->mysql) != 0)
        return push_error(L, c, "mysql.commit");
    lua_pushboolean(L, 1);
    return 1;
}

/* conn:rollback() -> true | nil, err, code */
static int c_rollback(lua_State *L)
{
    conn *c = check_open(L, "mysql.rollback");
    if (mysql_rollback(c->mysql) != 0)
        return push_error(L, c, "mysql.rollback");
    lua_pushboolean(L, 1);
    return 1;
}

/* conn:ping() -> true | nil, err, code (never reconnects) */
static int c_ping(lua_State *L)
{
    conn *c = check_open(L, "mysql.ping");
    if (mysql_ping(c->mysql) != 0)
        return push_error(L, c, "mysql.ping");
    lua_pushboolean(L, 1);
    return 1;
}

/* conn:escape(s) -> s backslash-escaped, without quotes */
static int c_escape(lua_State *L)
{
    size_t len;
    const char *s;
    luaL_Buffer b;
    check_open(L, "mysql.escape");
    s = luaL_checklstring(L, 2, &len);
    if (len > (SIZE_MAX - 8) / 2)
        return luaL_error(L, "mysql.escape: string too long");
    luaL_pushresultsize(&b, escape_to(luaL_buffinitsize(L, &b, 2 * len), s, len));
    return 1;
}

/* conn:server_version() -> string, e.g. "10.11.6-MariaDB-0+deb12u1" */
static int c_server_version(lua_State *L)
{
    conn *c = check_open(L, "mysql.server_version");
    lua_pushstring(L, mysql_get_server_info(c->mysql));
    return 1;
}

/* conn:close(): safe twice; also __gc and __close */
static int c_close(lua_State *L)
{
    conn_shut(luaL_checkudata(L, 1, CONN_MT));
    return 0;
}

/* tostring(conn) -> "mysql.connection (mysql://user@host:port/db)" | "mysql.connection (closed)" */
static int c_tostring(lua_State *L)
{
    conn *c = luaL_checkudata(L, 1, CONN_MT);
    if (c->mysql == NULL) {
        lua_pushliteral(L, "mysql.connection (closed)");
    } else {
        lua_getiuservalue(L, 1, 1);
        lua_pushfstring(L, "mysql.connection (%s)", lua_tostring(L, -1));
    }
    return 1;
}

/* The names connect() accepts in opts and (with - or _) as URL parameters. */
static const char *const setting_names[] = {
    "connect_timeout", "read_timeout", "write_timeout", "ssl_mode", "ssl_ca", "ssl_capath",
    "ssl_cert", "ssl_key", "local_infile", "socket", "password", NULL,
};

enum { SSL_DISABLED, SSL_PREFERRED, SSL_REQUIRED, SSL_VERIFY_CA, SSL_VERIFY_IDENTITY };
static const char *const ssl_modes[] = {
    "disabled", "preferred", "required", "verify_ca", "verify_identity", NULL,
};

/* Stores value (stack top) under the normalized name (stack top - 1, a string) into the table
 * at t; pops both. Raises on an unknown name. The password is only accepted from opts. */
static void add_setting(lua_State *L, int t, int from_url, const char *fname)
{
    char name[32];
    size_t len, i;
    const char *s;
    int k;
    if (lua_type(L, -2) != LUA_TSTRING)
        luaL_error(L, "%s: option names must be strings", fname);
    s = lua_tolstring(L, -2, &len);
    for (i = 0; i < len && i < sizeof name - 1; i++)
        name[i] = s[i] == '-' ? '_' : s[i];
    name[i] = '\0';
    for (k = 0; setting_names[k] != NULL; k++)
        if (len == i && strcmp(name, setting_names[k]) == 0)
            break;
    if (setting_names[k] == NULL || (from_url && strcmp(name, "password") == 0)) {
        if (from_url)
            luaL_error(L, "%s: unknown URL parameter '%s'", fname, lua_tostring(L, -2));
        luaL_error(L, "%s: unknown option '%s'", fname, lua_tostring(L, -2));
    }
    lua_setfield(L, t, setting_names[k]);
    lua_pop(L, 1);
}

/* Pushes a table of the settings: the URL's params (in the parsed URL at u) overridden by the
 * options table at opts (0: none). */
static void build_settings(lua_State *L, int u, int opts, const char *fname)
{
    int t;
    lua_newtable(L);
    t = lua_gettop(L);
    lua_getfield(L, u, "params");
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        add_setting(L, t, 1, fname);
    }
    lua_pop(L, 1);
    if (opts != 0) {
        lua_pushnil(L);
        while (lua_next(L, opts) != 0) {
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            add_setting(L, t, 0, fname);
        }
    }
}

/* t[key] as a NUL-free C string (kept alive by t), or NULL when absent; raises otherwise. */
static const char *get_string(lua_State *L, int t, const char *key, const char *fname)
{
    const char *s;
    size_t len;
    int type = lua_getfield(L, t, key);
    if (type == LUA_TNIL) {
        lua_pop(L, 1);
        return NULL;
    }
    if (type != LUA_TSTRING)
        luaL_error(L, "%s: option '%s' must be a string", fname, key);
    s = lua_tolstring(L, -1, &len);
    if (strlen(s) != len)
        luaL_error(L, "%s: option '%s' contains a NUL byte", fname, key);
    lua_pop(L, 1);
    return s;
}

/* t[key] (a number or a numeric string) as whole seconds, rounded up; def when absent. */
static unsigned int get_seconds(lua_State *L, int t, const char *key, unsigned int def,
                                const char *fname)
{
    int isnum = 0;
    lua_Number v;
    if (lua_getfield(L, t, key) == LUA_TNIL) {
        lua_pop(L, 1);
        return def;
    }
    v = lua_tonumberx(L, -1, &isnum);
    lua_pop(L, 1);
    if (!isnum || !(v > 0) || v > 31536000)
        luaL_error(L, "%s: option '%s' must be a number of seconds > 0", fname, key);
    return (unsigned int)ceil((double)v);
}

/* t[key] as a boolean (true/false, or "1", "0", "true", "false", "yes", "no", "on", "off"). */
static int get_bool(lua_State *L, int t, const char *key, int def, const char *fname)
{
    static const char *const yes[] = {"1", "true", "yes", "on", NULL};
    static const char *const no[] = {"0", "false", "no", "off", NULL};
    int type = lua_getfield(L, t, key), k, v = -1;
    if (type == LUA_TNIL) {
        v = def;
    } else if (type == LUA_TBOOLEAN) {
        v = lua_toboolean(L, -1);
    } else if (type == LUA_TSTRING) {
        const char *s = lua_tostring(L, -1);
        for (k = 0; yes[k] != NULL; k++) {
            if (strcmp(s, yes[k]) == 0) v = 1;
            if (strcmp(s, no[k]) == 0) v = 0;
        }
    }
    if (v < 0)
        luaL_error(L, "%s: option '%s' must be a boolean", fname, key);
    lua_pop(L, 1);
    return v;
}

/* The ssl_mode setting (case-insensitive, - or _); def when absent. */
static int get_ssl_mode(lua_State *L, int t, int def, const char *fname)
{
    const char *s = get_string(L, t, "ssl_mode", fname);
    char buf[24];
    size_t i;
    int k;
    if (s == NULL)
        return def;
    for (i = 0; s[i] != '\0' && i < sizeof buf - 1; i++)
        buf[i] = s[i] == '-' ? '_' : (s[i] >= 'A' && s[i] <= 'Z' ? (char)(s[i] + 32) : s[i]);
    buf[i] = '\0';
    for (k = 0; ssl_modes[k] != NULL; k++)
        if (s[i] == '\0' && strcmp(buf, ssl_modes[k]) == 0)
            return k;
    return luaL_error(L, "%s: option 'ssl_mode' must be disabled, preferred, required, "
                         "verify_ca or verify_identity", fname);
}

/* Pushes msg with every occurrence of secret (when non-empty) replaced by "***". */
static void push_scrubbed(lua_State *L, const char *msg, const char *secret)
{
    size_t slen = secret != NULL ? strlen(secret) : 0;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    while (*msg != '\0') {
        if (slen > 0 && strncmp(msg, secret, slen) == 0) {
            luaL_addstring(&b, "***");
            msg += slen;
        } else {
            luaL_addchar(&b, *msg++);
        }
    }
    luaL_pushresult(&b);
}

/* Brings a new session to the state the binding relies on: autocommit on, no
 * NO_BACKSLASH_ESCAPES; reads max_allowed_packet. Returns 0, or -1 with the error in mysql. */
static int setup_session(conn *c)
{
    static const char fix_mode[] =
        "SET SESSION sql_mode = TRIM(BOTH ',' FROM REPLACE(CONCAT(',', @@SESSION.sql_mode, ','),"
        " ',NO_BACKSLASH_ESCAPES,', ','))";
    static const char get_packet[] = "SELECT @@SESSION.max_allowed_packet";
    /* A LOAD DATA's warnings are all read back (see load_rows): keep as many as there are. */
    static const char all_warnings[] = "SET SESSION max_error_count = 65535";
    unsigned int status = 0;
    MYSQL_RES *res;
    MYSQL_ROW row;

    mariadb_get_infov(c->mysql, MARIADB_CONNECTION_SERVER_STATUS, &status);
    if ((status & SERVER_STATUS_AUTOCOMMIT) == 0 && mysql_autocommit(c->mysql, 1) != 0)
        return -1;
    if ((status & SERVER_STATUS_NO_BACKSLASH_ESCAPES) != 0
        && mysql_real_query(c->mysql, fix_mode, sizeof fix_mode - 1) != 0)
        return -1;
    if (c->infile && mysql_real_query(c->mysql, all_warnings, sizeof all_warnings - 1) != 0)
        return -1;
    if (mysql_real_query(c->mysql, get_packet, sizeof get_packet - 1) != 0)
        return -1;
    res = mysql_store_result(c->mysql);
    if (res == NULL)
        return -1;
    row = mysql_fetch_row(res);
    c->max_packet = row != NULL && row[0] != NULL ? (size_t)strtoull(row[0], NULL, 10) : 0;
    mysql_free_result(res);
    return 0;
}

/* LOAD DATA LOCAL INFILE is served from memory only: whatever file name the server asks for,
 * the client reads c->feed, the text of the batch being loaded, and nothing when no batch is
 * being loaded. So a server can never make lproc send one of its files. */
static int infile_init(void **ptr, const char *filename, void *userdata)
{
    conn *c = userdata;
    *ptr = c;
    c->feed_pos = 0;
    return c->feed == NULL ? 1 : 0;
}

static int infile_read(void *ptr, char *buf, unsigned int buf_len)
{
    conn *c = ptr;
    size_t n = c->feed_len - c->feed_pos;
    if (n > buf_len)
        n = buf_len;
    memcpy(buf, c->feed + c->feed_pos, n);
    c->feed_pos += n;
    return (int)n;
}

static void infile_end(void *ptr)
{
}

static int infile_error(void *ptr, char *msg, unsigned int len)
{
    snprintf(msg, len, "lproc.mysql sends no file: LOAD DATA LOCAL serves only batches");
    return CR_UNKNOWN_ERROR;
}

/* mysql.connect(url [, opts]) -> conn | nil, err, code
 * opts (override URL parameters): connect_timeout (10), read_timeout (60), write_timeout (60)
 * in seconds; ssl_mode; ssl_ca, ssl_capath, ssl_cert, ssl_key; local_infile (false); socket;
 * password. A bad URL or option raises; a failed connection returns nil, err, code. */
static int l_connect(lua_State *L)
{
    static const char fname[] = "mysql.connect";
    size_t ulen;
    const char *url = luaL_checklstring(L, 1, &ulen);
    const char *user, *pass, *host, *db, *sock, *ca, *capath, *cert, *key, *target;
    unsigned int ctimeout, rtimeout, wtimeout, infile;
    unsigned int port;
    int mode, is_local, v6;
    my_bool yes = 1, no = 0;
    conn *c;

    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    parse_url(L, url, ulen, fname);                                   /* 3 */
    build_settings(L, 3, lua_istable(L, 2) ? 2 : 0, fname);           /* 4 */
    user = get_string(L, 3, "user", fname);
    host = get_string(L, 3, "host", fname);
    db = get_string(L, 3, "database", fname);
    lua_getfield(L, 3, "port");
    port = (unsigned int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    pass = get_string(L, 4, "password", fname);
    if (pass == NULL)
        pass = get_string(L, 3, "password", fname);
    sock = get_string(L, 4, "socket", fname);
    ctimeout = get_seconds(L, 4, "connect_timeout", 10, fname);
    rtimeout = get_seconds(L, 4, "read_timeout", 60, fname);
    wtimeout = get_seconds(L, 4, "write_timeout", 60, fname);
    infile = (unsigned int)get_bool(L, 4, "local_infile", 0, fname);
    ca = get_string(L, 4, "ssl_ca", fname);
    capath = get_string(L, 4, "ssl_capath", fname);
    cert = get_string(L, 4, "ssl_cert", fname);
    key = get_string(L, 4, "ssl_key", fname);
    mode = get_ssl_mode(L, 4, SSL_PREFERRED, fname);
    if (mode >= SSL_VERIFY_CA && ca == NULL && capath == NULL)
        return luaL_error(L, "%s: ssl_mode %s needs ssl_ca or ssl_capath", fname, ssl_modes[mode]);

    /* 5: the target named in errors; 6: the description shown by tostring */
    is_local = sock != NULL || strcmp(host, "localhost") == 0;
    v6 = strchr(host, ':') != NULL;
    if (sock != NULL)
        lua_pushstring(L, sock);
    else if (is_local)
        lua_pushliteral(L, "localhost");
    else
        lua_pushfstring(L, v6 ? "[%s]:%d" : "%s:%d", host, (int)port);
    target = lua_tostring(L, 5);
    lua_pushfstring(L, "mysql://%s%s%s/%s", user != NULL ? user : "", user != NULL ? "@" : "",
                    sock != NULL ? "localhost" : target, db != NULL ? db : "");

    c = lua_newuserdatauv(L, sizeof *c, 1);                           /* 7 */
    c->mysql = NULL;
    c->res = NULL;
    c->max_packet = 0;
    c->infile = (int)infile;
    c->no_load = 0;
    c->feed = NULL;
    c->feed_len = c->feed_pos = 0;
    luaL_setmetatable(L, CONN_MT);
    lua_pushvalue(L, 6);
    lua_setiuservalue(L, 7, 1);

    c->mysql = mysql_init(NULL);
    if (c->mysql == NULL) {
        luaL_pushfail(L);
        lua_pushfstring(L, "%s: %s: not enough memory", fname, target);
        lua_pushinteger(L, CR_OUT_OF_MEMORY);
        return 3;
    }
    mysql_optionsv(c->mysql, MYSQL_OPT_CONNECT_TIMEOUT, &ctimeout);
    mysql_optionsv(c->mysql, MYSQL_OPT_READ_TIMEOUT, &rtimeout);
    mysql_optionsv(c->mysql, MYSQL_OPT_WRITE_TIMEOUT, &wtimeout);
    mysql_optionsv(c->mysql, MYSQL_OPT_LOCAL_INFILE, &infile);
    if (infile)
        mysql_set_local_infile_handler(c->mysql, infile_init, infile_read, infile_end,
                                       infile_error, c);
    mysql_optionsv(c->mysql, MYSQL_OPT_RECONNECT, &no);
    mysql_optionsv(c->mysql, MYSQL_SET_CHARSET_NAME, "utf8mb4");
    if (mode != SSL_DISABLED)
        mysql_ssl_set(c->mysql, key, cert, ca, capath, NULL);
    if (mode >= SSL_REQUIRED)
        mysql_optionsv(c->mysql, MYSQL_OPT_SSL_ENFORCE, &yes);
    if (mode == SSL_VERIFY_IDENTITY)
        mysql_optionsv(c->mysql, MYSQL_OPT_SSL_VERIFY_SERVER_CERT, &yes);

    if (mysql_real_connect(c->mysql, host, user, pass, db, port, sock, 0) != NULL) {
        /* Connector/C 3.3 goes on in plain text when the server offers no TLS, unless the
         * certificate is verified: check, so that "required" means it. */
        if (mode >= SSL_REQUIRED && mysql_get_ssl_cipher(c->mysql) == NULL) {
            luaL_pushfail(L);
            lua_pushfstring(L, "%s: %s: TLS is required but the server does not support it (%d)",
                            fname, target, CR_SSL_CONNECTION_ERROR);
            lua_pushinteger(L, CR_SSL_CONNECTION_ERROR);
            conn_shut(c);
            return 3;
        }
        if (setup_session(c) == 0) {
            lua_pushvalue(L, 7);
            return 1;
        }
    }
    {
        unsigned int code = mysql_errno(c->mysql);
        luaL_pushfail(L);
        lua_pushfstring(L, "%s: %s: ", fname, target);
        push_scrubbed(L, mysql_error(c->mysql), pass);
        lua_pushfstring(L, " (%d)", (int)code);
        lua_concat(L, 3);
        lua_pushinteger(L, (lua_Integer)code);
        conn_shut(c);
        return 3;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Batches: rows escaped into a C buffer as "(v1,...,vN)," and sent by conn:insert */

typedef struct batch {
    char *buf;              /* the rows, each followed by ',' */
    size_t len, cap;
    size_t *ends;           /* ends[i]: offset just after row i's ',' */
    size_t nrows, ends_cap;
    char *stmt;             /* scratch space for one statement */
    size_t stmt_cap;
    size_t max_bytes;       /* 0: the connection's limit */
    int ncols;
    int load;               /* sent with LOAD DATA LOCAL when the connection allows it */
    int closed;
} batch;

/* Frees the batch's memory; safe twice. */
static void batch_free(batch *b)
{
    free(b->buf);
    free(b->ends);
    free(b->stmt);
    b->buf = b->stmt = NULL;
    b->ends = NULL;
    b->len = b->cap = b->nrows = b->ends_cap = b->stmt_cap = 0;
}

/* Makes *p hold at least need bytes (elem-sized items). Returns 0, or -1 when out of memory. */
static int reserve(void **p, size_t *cap, size_t need, size_t elem)
{
    size_t ncap = *cap > 0 ? *cap : 64;
    void *q;
    if (need <= *cap)
        return 0;
    while (ncap < need)
        ncap = ncap > SIZE_MAX / 2 / elem ? need : ncap * 2;
    if (need > SIZE_MAX / elem)
        return -1;
    q = realloc(*p, ncap * elem);
    if (q == NULL)
        return -1;
    *p = q;
    *cap = ncap;
    return 0;
}

/* The batch at idx, which must be open; raises "<fname>: batch is closed". */
static batch *check_batch(lua_State *L, int idx, const char *fname)
{
    batch *b = luaL_checkudata(L, idx, BATCH_MT);
    if (b->closed)
        luaL_error(L, "%s: batch is closed", fname);
    return b;
}

/* Pushes the identifier at idx quoted for MySQL: `name`, backticks doubled. Raises on a
 * non-string, an empty name or a NUL byte. */
static void push_ident(lua_State *L, int idx, const char *fname)
{
    size_t len;
    const char *s;
    if (lua_type(L, idx) != LUA_TSTRING)
        luaL_error(L, "%s: identifiers must be strings, got %s", fname, luaL_typename(L, idx));
    s = lua_tolstring(L, idx, &len);
    if (len == 0 || strlen(s) != len)
        luaL_error(L, "%s: identifiers must be non-empty and free of NUL bytes", fname);
    luaL_gsub(L, s, "`", "``");
    lua_pushfstring(L, "`%s`", lua_tostring(L, -1));
    lua_remove(L, -2);
}

/* Adds the quoted names of the array at qidx (n of them), separated by ','. buf is the newest
 * buffer: each name goes on the stack just above it and in with luaL_addvalue, as a buffer
 * that grows needs its box right below the top. */
static void add_names(lua_State *L, luaL_Buffer *buf, int qidx, int n)
{
    int i;
    for (i = 1; i <= n; i++) {
        if (i > 1)
            luaL_addchar(buf, ',');
        lua_geti(L, qidx, i);
        luaL_addvalue(buf);
    }
}

/* mysql.batch(table, columns [, {on_duplicate = "ignore"|"update", keys = {...},
 *             max_bytes = n}]) -> batch
 * on_duplicate "ignore": ON DUPLICATE KEY UPDATE `c1`=`c1` (idempotent on the key);
 * "update": every column not in keys (default: the first column) = VALUES(col). */
static int l_batch(lua_State *L)
{
    static const char fname[] = "mysql.batch";
    static const char *const dup_modes[] = {"none", "ignore", "update", NULL};
    int ncols, i, dup = 0, nkeys = 0, first, load = 0;
    lua_Integer max_bytes = 0;
    luaL_Buffer buf;
    batch *b;

    luaL_checktype(L, 2, LUA_TTABLE);
    ncols = (int)luaL_len(L, 2);
    if (ncols < 1)
        return luaL_error(L, "%s: columns must be a non-empty array of names", fname);
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        if (lua_getfield(L, 3, "on_duplicate") != LUA_TNIL) {
            const char *m = lua_tostring(L, -1);
            for (dup = 1; m != NULL && dup_modes[dup] != NULL; dup++)
                if (lua_type(L, -1) == LUA_TSTRING && strcmp(m, dup_modes[dup]) == 0)
                    break;
            if (m == NULL || dup_modes[dup] == NULL)
                return luaL_error(L, "%s: on_duplicate must be \"ignore\", \"update\" or nil",
                                  fname);
        }
        lua_getfield(L, 3, "max_bytes");
        if (!lua_isnil(L, -1)) {
            int isint;
            max_bytes = lua_tointegerx(L, -1, &isint);
            if (!isint || max_bytes < MIN_MAX_BYTES)
                return luaL_error(L, "%s: max_bytes must be an integer >= %d", fname,
                                  MIN_MAX_BYTES);
        }
        lua_getfield(L, 3, "keys");
        if (!lua_isnil(L, -1)) {
            luaL_checktype(L, -1, LUA_TTABLE);
            nkeys = (int)luaL_len(L, -1);
        }
        if (lua_getfield(L, 3, "load") != LUA_TNIL) {
            if (!lua_isboolean(L, -1))
                return luaL_error(L, "%s: load must be a boolean", fname);
            load = lua_toboolean(L, -1);
        }
        if (load && dup != 1)
            return luaL_error(L, "%s: load needs on_duplicate = \"ignore\" (LOAD DATA LOCAL "
                                 "skips duplicates)", fname);
        lua_settop(L, 3);
    }
    lua_settop(L, 3);

    /* 4: the table's name quoted; 5: the columns' names quoted; made before any buffer */
    push_ident(L, 1, fname);
    lua_createtable(L, ncols, 0);
    for (i = 1; i <= ncols; i++) {
        lua_geti(L, 2, i);
        push_ident(L, lua_gettop(L), fname);
        lua_seti(L, 5, i);
        lua_pop(L, 1);
    }

    /* 6: "INSERT INTO `t` (`a`,`b`) VALUES " */
    luaL_buffinit(L, &buf);
    luaL_addstring(&buf, "INSERT INTO ");
    lua_pushvalue(L, 4);
    luaL_addvalue(&buf);
    luaL_addstring(&buf, " (");
    add_names(L, &buf, 5, ncols);
    luaL_addstring(&buf, ") VALUES ");
    luaL_pushresult(&buf);

    /* 7: the ON DUPLICATE KEY clause, or "" */
    luaL_buffinit(L, &buf);
    if (dup != 0) {
        luaL_addstring(&buf, " ON DUPLICATE KEY UPDATE ");
        first = 1;
        for (i = 1; i <= ncols && dup == 2; i++) {
            int k, is_key = 0;
            if (nkeys == 0) {
                is_key = i == 1;
            } else {
                lua_geti(L, 2, i);
                for (k = 1; k <= nkeys && !is_key; k++) {
                    lua_getfield(L, 3, "keys");
                    lua_geti(L, -1, k);
                    is_key = lua_rawequal(L, -1, -3);
                    lua_pop(L, 2);
                }
                lua_pop(L, 1);
            }
            if (!is_key) {
                if (!first)
                    luaL_addchar(&buf, ',');
                lua_geti(L, 5, i);
                lua_pushfstring(L, "%s=VALUES(%s)", lua_tostring(L, -1), lua_tostring(L, -1));
                lua_remove(L, -2);
                luaL_addvalue(&buf);
                first = 0;
            }
        }
        if (first) {   /* "ignore", or every column is a key */
            lua_geti(L, 5, 1);
            lua_pushfstring(L, "%s=%s", lua_tostring(L, -1), lua_tostring(L, -1));
            lua_remove(L, -2);
            luaL_addvalue(&buf);
        }
    }
    luaL_pushresult(&buf);

    /* 8: "LOAD DATA LOCAL INFILE ... (`a`,`b`)" in the text format of rows_to_text, or "" */
    luaL_buffinit(L, &buf);
    if (load) {
        luaL_addstring(&buf, "LOAD DATA LOCAL INFILE 'lproc-batch' IGNORE INTO TABLE ");
        lua_pushvalue(L, 4);
        luaL_addvalue(&buf);
        luaL_addstring(&buf, " CHARACTER SET binary FIELDS TERMINATED BY '\\t' ESCAPED BY "
                             "'\\\\' LINES TERMINATED BY '\\n' (");
        add_names(L, &buf, 5, ncols);
        luaL_addchar(&buf, ')');
    }
    luaL_pushresult(&buf);

    b = lua_newuserdatauv(L, sizeof *b, 3);
    memset(b, 0, sizeof *b);
    b->ncols = ncols;
    b->max_bytes = (size_t)max_bytes;
    b->load = load;
    luaL_setmetatable(L, BATCH_MT);
    for (i = 1; i <= 3; i++) {
        lua_pushvalue(L, 5 + i);
        lua_setiuservalue(L, -2, i);
    }
    return 1;
}

/* batch:add(v1, ..., vN): appends one row of exactly #columns values */
static int b_add(lua_State *L)
{
    static const char fname[] = "mysql.batch.add";
    batch *b = check_batch(L, 1, fname);
    int n = lua_gettop(L) - 1, k;
    size_t need = 2, pos;
    if (n != b->ncols)
        return luaL_error(L, "%s: expected %d values, got %d", fname, b->ncols, n);
    for (k = 0; k < n; k++) {
        size_t m = literal_max(L, k + 2, fname, k + 1) + 1;
        if (need > SIZE_MAX - m)
            return luaL_error(L, "%s: row too large", fname);
        need += m;
    }
    if (b->len > SIZE_MAX - need
        || reserve((void **)&b->buf, &b->cap, b->len + need, 1) != 0
        || reserve((void **)&b->ends, &b->ends_cap, b->nrows + 1, sizeof(size_t)) != 0)
        return luaL_error(L, "%s: not enough memory", fname);
    pos = b->len;
    b->buf[pos++] = '(';
    for (k = 0; k < n; k++) {
        if (k > 0)
            b->buf[pos++] = ',';
        pos += literal_write(L, k + 2, b->buf + pos);
    }
    b->buf[pos++] = ')';
    b->buf[pos++] = ',';
    b->len = pos;
    b->ends[b->nrows++] = pos;
    return 0;
}

/* batch:count() -> number of rows */
static int b_count(lua_State *L)
{
    batch *b = check_batch(L, 1, "mysql.batch.count");
    lua_pushinteger(L, (lua_Integer)b->nrows);
    return 1;
}

/* batch:bytes() -> bytes of the rows' SQL text */
static int b_bytes(lua_State *L)
{
    batch *b = check_batch(L, 1, "mysql.batch.bytes");
    lua_pushinteger(L, (lua_Integer)b->len);
    return 1;
}

/* batch:clear(): removes every row (keeps the memory unless it grew past 64 MB) */
static int b_clear(lua_State *L)
{
    batch *b = check_batch(L, 1, "mysql.batch.clear");
    if (b->cap > 64u * 1024 * 1024 || b->stmt_cap > 64u * 1024 * 1024)
        batch_free(b);
    b->len = 0;
    b->nrows = 0;
    return 0;
}

/* batch:close(): frees the rows; safe twice; also __gc and __close */
static int b_close(lua_State *L)
{
    batch *b = luaL_checkudata(L, 1, BATCH_MT);
    batch_free(b);
    b->closed = 1;
    return 0;
}

/* tostring(batch) -> "mysql.batch (N rows)" | "mysql.batch (closed)" */
static int b_tostring(lua_State *L)
{
    batch *b = luaL_checkudata(L, 1, BATCH_MT);
    if (b->closed)
        lua_pushliteral(L, "mysql.batch (closed)");
    else
        lua_pushfstring(L, "mysql.batch (%I rows)", (lua_Integer)b->nrows);
    return 1;
}

/* Rewrites rows in the literal form batch:add writes, "(v,...),(v,...),", into the text
 * LOAD DATA reads (FIELDS TERMINATED BY TAB ESCAPED BY backslash, LINES TERMINATED BY LF):
 * NULL becomes \N, a string loses its quotes and keeps its backslash escapes (LOAD DATA reads
 * \0 \n \r \Z \\ as a literal does, and \' \" as the quote), a TAB in it becomes \t; numbers
 * stay. dst needs room for 2 * n bytes; returns the bytes written. */
static size_t rows_to_text(const char *s, size_t n, char *dst)
{
    char *d = dst;
    size_t i = 0;
    while (i < n) {
        char ch = s[i++];
        switch (ch) {
        case '\'':
            for (; s[i] != '\''; i++) {
                if (s[i] == '\\') {
                    *d++ = s[i++];
                    *d++ = s[i];
                } else if (s[i] == '\t') {
                    *d++ = '\\';
                    *d++ = 't';
                } else {
                    *d++ = s[i];
                }
            }
            i++;
            break;
        case '(':
            break;
        case ')':
            *d++ = '\n';
            i++;                            /* the ',' after every row */
            break;
        case ',':
            *d++ = '\t';
            break;
        case 'N':                           /* NULL */
            *d++ = '\\';
            *d++ = 'N';
            i += 3;
            break;
        default:
            *d++ = ch;
        }
    }
    return (size_t)(d - dst);
}

/* After a LOAD DATA that left `count` warnings: 0 when every one is a skipped duplicate (1062);
 * otherwise pushes nil, "<fname>: <the first other warning> (<code>)", code (the server
 * coerced a value that a strict INSERT would have refused) and returns -1. */
static int check_warnings(lua_State *L, conn *c, unsigned int count, const char *fname)
{
    static const char show[] = "SHOW WARNINGS";
    MYSQL_RES *res;
    MYSQL_ROW row;
    unsigned int seen = 0;
    if (mysql_real_query(c->mysql, show, sizeof show - 1) != 0
        || (res = mysql_store_result(c->mysql)) == NULL) {
        push_error(L, c, fname);
        return -1;
    }
    while ((row = mysql_fetch_row(res)) != NULL) {
        long code = row[1] != NULL ? strtol(row[1], NULL, 10) : 0;
        seen++;
        if (code != ER_DUP_ENTRY) {
            luaL_pushfail(L);
            lua_pushfstring(L, "%s: %s (%d)", fname, row[2] != NULL ? row[2] : "?", (int)code);
            lua_pushinteger(L, code);
            mysql_free_result(res);
            return -1;
        }
    }
    mysql_free_result(res);
    if (seen < count) {
        luaL_pushfail(L);
        lua_pushfstring(L, "%s: LOAD DATA left %d warnings, %d of them shown (%d)", fname,
                        (int)count, (int)seen, ER_UNKNOWN_ERROR);
        lua_pushinteger(L, ER_UNKNOWN_ERROR);
        return -1;
    }
    return 0;
}

/* Runs one statement of SQL text without results; 0 or -1 (the error is the connection's). */
static int run_plain(conn *c, const char *sql)
{
    return mysql_real_query(c->mysql, sql, (unsigned long)strlen(sql));
}

/* Sends every row of the load batch at index 2 as one LOAD DATA LOCAL ... IGNORE, served from
 * memory, all or nothing as an INSERT would be: in a savepoint inside the caller's
 * transaction, else in a transaction of its own. Returns the number of values pushed
 * (affected_rows | nil, err, code), or 0 when the server does not allow LOAD DATA LOCAL: then
 * c->no_load is set, nothing changed, and the caller uses INSERT. */
static int load_rows(lua_State *L, conn *c, batch *b, const char *fname)
{
    size_t n, sql_len;
    const char *sql;
    my_ulonglong affected;
    unsigned int status = 0, warnings;
    int rc, own;

    if (b->len > SIZE_MAX / 2 || reserve((void **)&b->stmt, &b->stmt_cap, 2 * b->len, 1) != 0)
        return luaL_error(L, "%s: not enough memory", fname);
    n = rows_to_text(b->buf, b->len, b->stmt);
    lua_getiuservalue(L, 2, 3);
    sql = lua_tolstring(L, -1, &sql_len);
    mariadb_get_infov(c->mysql, MARIADB_CONNECTION_SERVER_STATUS, &status);
    own = (status & SERVER_STATUS_IN_TRANS) == 0;
    if (run_plain(c, own ? "START TRANSACTION" : "SAVEPOINT lproc_load") != 0)
        return push_error(L, c, fname);
    c->feed = b->stmt;
    c->feed_len = n;
    rc = mysql_real_query(c->mysql, sql, (unsigned long)sql_len);
    c->feed = NULL;
    if (rc != 0) {
        unsigned int code = mysql_errno(c->mysql);
        if (code == ER_LOAD_INFILE_CAPABILITY_DISABLED || code == ER_NOT_ALLOWED_COMMAND
            || code == ER_LOCAL_FILES_DISABLED) {
            c->no_load = 1;
            if (own && run_plain(c, "ROLLBACK") != 0)
                return push_error(L, c, fname);
            return 0;
        }
        push_error(L, c, fname);
        if (own)
            run_plain(c, "ROLLBACK");
        return 3;
    }
    affected = mysql_affected_rows(c->mysql);
    warnings = mysql_warning_count(c->mysql);
    if (warnings > 0 && check_warnings(L, c, warnings, fname) != 0) {
        /* The server coerced a value: undo the rows, keep the first error (pushed). */
        run_plain(c, own ? "ROLLBACK" : "ROLLBACK TO SAVEPOINT lproc_load");
        return 3;
    }
    if (own && run_plain(c, "COMMIT") != 0)
        return push_error(L, c, fname);
    lua_pushinteger(L, (lua_Integer)affected);
    return 1;
}

/* conn:insert(batch) -> affected_rows | nil, err, code
 * Sends the rows as multi-row INSERTs of at most max_bytes each (a row larger than that goes
 * alone). Does not clear the batch. affected_rows sums the statements' counts: 1 per new row;
 * with on_duplicate, 0 for an unchanged existing row and 2 for an updated one. */
static int c_insert(lua_State *L)
{
    static const char fname[] = "mysql.insert";
    conn *c = check_open(L, fname);
    batch *b = check_batch(L, 2, fname);
    size_t limit, head_len, tail_len, i = 0, j;
    const char *head, *tail;
    lua_Integer total = 0;

    if (b->nrows == 0) {
        lua_pushinteger(L, 0);
        return 1;
    }
    check_escaping(L, c, fname);
    if (b->load && c->infile && !c->no_load) {
        int pushed = load_rows(L, c, b, fname);
        if (pushed > 0)
            return pushed;
    }
    limit = c->max_packet > PACKET_MARGIN + MIN_MAX_BYTES ? c->max_packet - PACKET_MARGIN
                                                           : MAX_STATEMENT;
    if (limit > MAX_STATEMENT)
        limit = MAX_STATEMENT;
    if (b->max_bytes != 0 && b->max_bytes < limit)
        limit = b->max_bytes;
    lua_getiuservalue(L, 2, 1);
    head = lua_tolstring(L, -1, &head_len);
    lua_getiuservalue(L, 2, 2);
    tail = lua_tolstring(L, -1, &tail_len);

    while (i < b->nrows) {
        size_t start = i == 0 ? 0 : b->ends[i - 1], rows_len, n;
        for (j = i + 1; j < b->nrows; j++)
            if (head_len + (b->ends[j] - start - 1) + tail_len > limit)
                break;
        rows_len = b->ends[j - 1] - start - 1;   /* without the last ',' */
        n = head_len + rows_len + tail_len;
        if (c->max_packet != 0 && n + 1 > c->max_packet) {   /* + 1: the command byte */
            luaL_pushfail(L);
            lua_pushfstring(L, "%s: one row makes an INSERT of %I bytes, more than the server's "
                               "max_allowed_packet (%I bytes): raise it, or turn local_infile on "
                               "(%d)", fname, (lua_Integer)n, (lua_Integer)c->max_packet,
                            ER_NET_PACKET_TOO_LARGE);
            lua_pushinteger(L, ER_NET_PACKET_TOO_LARGE);
            return 3;
        }
        if (reserve((void **)&b->stmt, &b->stmt_cap, n, 1) != 0)
            return luaL_error(L, "%s: not enough memory", fname);
        memcpy(b->stmt, head, head_len);
        memcpy(b->stmt + head_len, b->buf + start, rows_len);
        memcpy(b->stmt + head_len + rows_len, tail, tail_len);
        if (mysql_real_query(c->mysql, b->stmt, (unsigned long)n) != 0)
            return push_error(L, c, fname);
        total += (lua_Integer)mysql_affected_rows(c->mysql);
        i = j;
    }
    lua_pushinteger(L, total);
    return 1;
}

/* ---------------------------------------------------------------------------------------- */
/* Module */

/* Codes after which the connection is unusable or the server unreachable: reconnect and retry.
 * Over TLS, a connection the server dropped is reported as CR_SSL_CONNECTION_ERROR, so that
 * code is here too (a TLS set-up that can never work is retried until the caller gives up). */
static const int connection_errors[] = {
    CR_SOCKET_CREATE_ERROR, CR_CONNECTION_ERROR, CR_CONN_HOST_ERROR, CR_IPSOCK_ERROR,
    CR_UNKNOWN_HOST, CR_SERVER_GONE_ERROR, CR_TCP_CONNECTION, CR_SERVER_HANDSHAKE_ERR,
    CR_SERVER_LOST, CR_SERVER_LOST_EXTENDED, CR_ERR_NET_READ, CR_ERR_NET_WRITE,
    ER_CON_COUNT_ERROR, ER_SERVER_SHUTDOWN, ER_ABORTING_CONNECTION, ER_NET_READ_ERROR_FROM_PIPE,
    ER_NET_PACKETS_OUT_OF_ORDER, ER_NET_READ_ERROR, ER_NET_READ_INTERRUPTED,
    ER_NET_ERROR_ON_WRITE, ER_NET_WRITE_INTERRUPTED, ER_NEW_ABORTING_CONNECTION,
    ER_TOO_MANY_USER_CONNECTIONS, ER_CONNECTION_KILLED, CR_SSL_CONNECTION_ERROR,
};

/* Errors of the server's state, not of the statement's data: the same statement can succeed
 * later (a lock or deadlock with another session, a read-only or full server). */
static const int transient_errors[] = {
    ER_LOCK_WAIT_TIMEOUT, ER_LOCK_DEADLOCK, ER_LOCK_TABLE_FULL, ER_OPTION_PREVENTS_STATEMENT,
    ER_READ_ONLY_MODE, ER_RECORD_FILE_FULL, ER_DISK_FULL,
};

/* Whether code is one of the n codes of list. */
static int code_in(lua_Integer code, const int *list, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (list[i] == code)
            return 1;
    return 0;
}

#define CODE_IN(code, list) code_in(code, list, sizeof list / sizeof list[0])

/* The error code at index 1, or -1 for nil (no code: none of the classes below). */
static lua_Integer opt_code(lua_State *L)
{
    return lua_isnoneornil(L, 1) ? -1 : luaL_checkinteger(L, 1);
}

/* mysql.is_connection_error(code) -> boolean (nil -> false) */
static int l_is_connection_error(lua_State *L)
{
    lua_pushboolean(L, CODE_IN(opt_code(L), connection_errors));
    return 1;
}

/* Errors of the database's setup: a table, column, grant, storage engine or setting (a row
 * larger than max_allowed_packet) is not what the statement needs. Neither waiting nor another
 * row cures them. */
static const int setup_errors[] = {
    ER_NO_SUCH_TABLE, ER_BAD_FIELD_ERROR, ER_TABLEACCESS_DENIED_ERROR, ER_COLUMNACCESS_DENIED_ERROR,
    ER_DBACCESS_DENIED_ERROR, ER_ACCESS_DENIED_ERROR, ER_SPECIFIC_ACCESS_DENIED_ERROR,
    ER_BAD_DB_ERROR, ER_OPEN_AS_READONLY, ER_NO_DEFAULT_FOR_FIELD, ER_WRONG_VALUE_COUNT_ON_ROW,
    ER_PARSE_ERROR, ER_NOT_KEYFILE, ER_CRASHED_ON_USAGE, ER_GET_ERRNO, ER_UNKNOWN_STORAGE_ENGINE,
    ER_TABLESPACE_MISSING, ER_NO_SUCH_TABLE_IN_ENGINE, ER_NET_PACKET_TOO_LARGE,
};

/* mysql.is_setup_error(code) -> boolean (nil -> false) */
static int l_is_setup_error(lua_State *L)
{
    lua_pushboolean(L, CODE_IN(opt_code(L), setup_errors));
    return 1;
}

/* mysql.is_transient_error(code) -> boolean (nil -> false): a connection error, or one of
 * transient_errors. */
static int l_is_transient_error(lua_State *L)
{
    lua_Integer code = opt_code(L);
    lua_pushboolean(L, CODE_IN(code, connection_errors) || CODE_IN(code, transient_errors));
    return 1;
}

static const luaL_Reg conn_methods[] = {
    {"execute", c_execute},
    {"query", c_query},
    {"query_one", c_query_one},
    {"insert", c_insert},
    {"begin", c_begin},
    {"commit", c_commit},
    {"rollback", c_rollback},
    {"ping", c_ping},
    {"escape", c_escape},
    {"server_version", c_server_version},
    {"close", c_close},
    {NULL, NULL},
};

static const luaL_Reg batch_methods[] = {
    {"add", b_add},
    {"count", b_count},
    {"bytes", b_bytes},
    {"clear", b_clear},
    {"close", b_close},
    {NULL, NULL},
};

static const luaL_Reg funcs[] = {
    {"parse_url", l_parse_url},
    {"connect", l_connect},
    {"batch", l_batch},
    {"is_connection_error", l_is_connection_error},
    {"is_transient_error", l_is_transient_error},
    {"is_setup_error", l_is_setup_error},
    {NULL, NULL},
};

int luaopen_lproc_mysql(lua_State *L)
{
    if (mysql_library_init(0, NULL, NULL) != 0)
        return luaL_error(L, "lproc.mysql: cannot initialize the MariaDB client library");
    lproc_newclass(L, CONN_MT, conn_methods, c_close, c_tostring);
    lproc_newclass(L, BATCH_MT, batch_methods, b_close, b_tostring);
    luaL_newlib(L, funcs);
    return 1;
}
