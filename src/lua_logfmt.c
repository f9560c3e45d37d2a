/*
 * lua_logfmt.c - lproc.logfmt: the cleaning engine (nginx log_format -> clean_log rows).
 *
 *   local logfmt = require "lproc.logfmt"
 *   local f = logfmt.compile(fmt)          -- one nginx log_format string -> one PCRE2 pattern
 *   f:pattern() -> text   f:variables() -> {name...}   f:match(line) -> {name = value} | nil
 *   logfmt.columns() -> {{name=, type=, null=}...}      the standard clean_log columns, in order
 *   local e = logfmt.engine{ formats = {{name=, format=}...}, geoip = {db...},
 *                            ua = {browser=, os=, device=, default_device=}, columns = {...},
 *                            map = fn, max_line = 65536, ua_cache = 4096 }
 *   e:process(line, id) -> true, v1, ..., vN | false, reason
 *   e:json(line, id)    -> one JSON object (no newline)
 *   e:bind(name)        -> function(self, line, id): e:process / e:json with the engine bound
 *   e:parse_url(target [, connect]) -> schema, host, port, path, query, rest_session
 *   e:columns(), e:stats(), e:close()
 *
 * A format compiles into one anchored PCRE2 (JIT) pattern with one numbered group per variable
 * occurrence. A variable's sub-pattern depends on the variable (a typed class for the ones that
 * have a type: $status is three digits, sizes are digits or '-', ...) and, for text variables,
 * on its delimiters: between double quotes it is any run of bytes other than '"' and '\', or
 * escapes ('\"', '\x22', '\\'); otherwise a run of bytes other than the literal byte that follows.
 *
 * Per line, everything runs in C: match, then the standard columns (time in UTC from the logged
 * offset, GeoIP, request and URL split, status text, sizes, user agent classes), then the
 * optional mapping function (Lua) through a reused record userdata, then the output (values for
 * the SQL insert, or JSON), both produced from one array of column values. User-agent rules
 * look at the first 2048 bytes of the user agent (UA_MATCH_MAX).
 *
 * Clean string values are valid UTF-8: every invalid sequence (maximal subpart) and every control
 * character (C0, DEL, C1) becomes U+FFFD, and values longer than their column are cut at a
 * character boundary. Values are otherwise kept as logged (nginx escapes such as \x22 stay).
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <pcre2.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "lproc.h"

#define FORMAT_MT "lproc.logfmt.format"
#define ENGINE_MT "lproc.logfmt.engine"
#define RECORD_MT "lproc.logfmt.record"

#define MAX_VARS 64                  /* variables in one format */
#define DEFAULT_MAX_LINE 65536
#define MAX_MAX_LINE (16 * 1024 * 1024)
#define DEFAULT_UA_CACHE 4096
#define UA_MATCH_MAX 2048            /* user-agent rules see this many bytes at most: a rule
                                        such as Android(?!.*Mobile) costs the square of it */
#define MAX_GEOIP 8
#define REASON_MAX 1024              /* characters kept of a reject reason */
#define MATCH_LIMIT 1000000

/* ------------------------------------------------------------------------------------------ */
/* Known variables                                                                            */
/* ------------------------------------------------------------------------------------------ */

/* Pattern classes. */
enum {
    P_TEXT,        /* delimited text (see text_pattern) */
    P_ADDR,        /* IPv4 / IPv6 address */
    P_TIME_LOCAL,  /* 01/Nov/2022:00:00:00 -0500 */
    P_TIME_ISO,    /* 2022-11-01T00:00:00-05:00 */
    P_DEC,         /* 1667278800.123 */
    P_STATUS,      /* 3 digits */
    P_UINT,        /* digits */
    P_UINT_DASH,   /* digits or - */
    P_DEC_DASH,    /* digits[.digits] or - */
    P_SESSION15,   /* 15 non-space bytes or - */
    P_PIPE         /* p or . */
};

/* What a known variable feeds (a role); a format remembers the group of each role. */
enum {
    F_NONE, F_IP, F_USER, F_SESSION, F_TIME_LOCAL, F_TIME_ISO, F_MSEC, F_REQUEST, F_METHOD,
    F_URI, F_PROTOCOL, F_STATUS, F_BODY_BYTES, F_BYTES, F_REQUEST_TIME, F_REFERRER, F_UA,
    F_HOST, F_SERVER_NAME, F_HTTP_HOST, N_ROLES
};

typedef struct known_var {
    const char *name;
    unsigned char role;
    unsigned char cls;
} known_var;

static const known_var known_vars[] = {
    {"remote_addr", F_IP, P_ADDR},
    {"realip_remote_addr", F_NONE, P_ADDR},
    {"server_addr", F_NONE, P_ADDR},
    {"remote_user", F_USER, P_TEXT},
    {"proxy_session", F_SESSION, P_SESSION15},
    {"time_local", F_TIME_LOCAL, P_TIME_LOCAL},
    {"time_iso8601", F_TIME_ISO, P_TIME_ISO},
    {"msec", F_MSEC, P_DEC},
    {"request", F_REQUEST, P_TEXT},
    {"request_method", F_METHOD, P_TEXT},
    {"request_uri", F_URI, P_TEXT},
    {"server_protocol", F_PROTOCOL, P_TEXT},
    {"status", F_STATUS, P_STATUS},
    {"body_bytes_sent", F_BODY_BYTES, P_UINT_DASH},
    {"bytes_sent", F_BYTES, P_UINT_DASH},
    {"request_length", F_NONE, P_UINT_DASH},
    {"request_time", F_REQUEST_TIME, P_DEC_DASH},
    {"http_referer", F_REFERRER, P_TEXT},
    {"http_user_agent", F_UA, P_TEXT},
    {"host", F_HOST, P_TEXT},
    {"server_name", F_SERVER_NAME, P_TEXT},
    {"http_host", F_HTTP_HOST, P_TEXT},
    {"remote_port", F_NONE, P_UINT_DASH},
    {"server_port", F_NONE, P_UINT_DASH},
    {"connection", F_NONE, P_UINT},
    {"connection_requests", F_NONE, P_UINT},
    {"pid", F_NONE, P_UINT},
    {"pipe", F_NONE, P_PIPE},
    {"gzip_ratio", F_NONE, P_DEC_DASH},
    {NULL, 0, 0},
};

/* An address followed by a byte that can be part of one (e.g. ':' in "$remote_addr:$remote_port")
 * must be able to give bytes back: there it is not possessive. */
#define ADDR_CHARS "0123456789ABCDEFabcdef:."
#define ADDR_BACKTRACK "[0-9A-Fa-f:.]+"

static const char *const class_patterns[] = {
    [P_ADDR] = "[0-9A-Fa-f:.]++",
    [P_TIME_LOCAL] = "\\d\\d/[A-Za-z]{3}/\\d{4}:\\d\\d:\\d\\d:\\d\\d [+-]\\d{4}",
    [P_TIME_ISO] = "\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d(?:[+-]\\d\\d:\\d\\d|Z)",
    [P_DEC] = "\\d++(?:\\.\\d++)?",
    [P_STATUS] = "\\d{3}",
    [P_UINT] = "\\d++",
    [P_UINT_DASH] = "\\d++|-",
    [P_DEC_DASH] = "\\d++(?:\\.\\d++)?|-",
    [P_SESSION15] = "[^ ]{15}|-",
    [P_PIPE] = "[p.]",
};

/* The known variable called name (len bytes), or NULL. */
static const known_var *find_known(const char *name, size_t len)
{
    const known_var *k;
    for (k = known_vars; k->name != NULL; k++)
        if (strlen(k->name) == len && memcmp(k->name, name, len) == 0)
            return k;
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Growable byte buffer (C memory, owned by its holder)                                       */
/* ------------------------------------------------------------------------------------------ */

typedef struct buf {
    char *p;
    size_t len, cap;
} buf;

/* Makes room for n more bytes. Returns 0, or -1 when out of memory. */
static int buf_grow(buf *b, size_t n)
{
    size_t cap;
    char *p;
    if (b->len + n <= b->cap)
        return 0;
    cap = b->cap ? b->cap : 256;
    while (cap < b->len + n)
        cap *= 2;
    p = realloc(b->p, cap);
    if (p == NULL)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

/* Appends n bytes. Returns 0 or -1 (out of memory). */
static int buf_add(buf *b, const void *s, size_t n)
{
    if (buf_grow(b, n) < 0)
        return -1;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

static int buf_adds(buf *b, const char *s)
{
    return buf_add(b, s, strlen(s));
}

/* ------------------------------------------------------------------------------------------ */
/* Format compiler                                                                            */
/* ------------------------------------------------------------------------------------------ */

/* A compiled format. Owns everything it points to. */
typedef struct format {
    pcre2_code *code;             /* NULL when closed */
    char *name;                   /* e.g. "combined" (may be NULL) */
    char *pattern;                /* the generated pattern text, NUL-terminated */
    int nvars;                    /* variable occurrences = capture groups */
    char *names[MAX_VARS];        /* variable names, NUL-terminated */
    unsigned char roles[MAX_VARS];
    int role_group[N_ROLES];      /* 1-based group of the first occurrence of a role, or 0 */
} format;

/* Appends the regex for the literal byte c (outside a character class). */
static int add_literal(buf *b, unsigned char c)
{
    char tmp[8];
    if (strchr("\\^$.|?*+()[]{}", c) != NULL && c != '\0') {
        tmp[0] = '\\';
        tmp[1] = (char)c;
        return buf_add(b, tmp, 2);
    }
    if (c < 0x20 || c >= 0x7f) {
        snprintf(tmp, sizeof tmp, "\\x%02x", c);
        return buf_adds(b, tmp);
    }
    return buf_add(b, &c, 1);
}

/* Appends the regex for a text variable given the bytes around it in the format: prev (or -1
 * at the start), next (-1 at the end, -2 when another variable follows). */
static int text_pattern(buf *b, int prev, int next)
{
    char tmp[16];
    if (prev == '"' && next == '"')
        return buf_adds(b, "(?:[^\"\\\\]++|\\\\.)*+");
    if (next == -1)
        return buf_adds(b, ".*+");
    if (next == -2)
        return buf_adds(b, ".*?");
    if (next < 0x20 || next >= 0x7f)
        snprintf(tmp, sizeof tmp, "[^\\x%02x]*+", next);
    else if (strchr("\\]^-[", next) != NULL)
        snprintf(tmp, sizeof tmp, "[^\\%c]*+", next);
    else
        snprintf(tmp, sizeof tmp, "[^%c]*+", next);
    return buf_adds(b, tmp);
}

/* Frees what a format owns (safe on a partly built or closed format). */
static void format_free(format *f)
{
    int i;
    if (f->code != NULL)
        pcre2_code_free(f->code);
    f->code = NULL;
    for (i = 0; i < f->nvars; i++)
        free(f->names[i]);
    f->nvars = 0;
    free(f->pattern);
    f->pattern = NULL;
    free(f->name);
    f->name = NULL;
}

/* Compiles the nginx log_format text src (len bytes) into f (zeroed by the caller). Returns 0,
 * or -1 with a message in err (f is then freed). Positions in messages are 1-based bytes. */
static int format_compile(format *f, const char *src, size_t len, char *err, size_t errlen)
{
    buf b = {0};
    size_t i = 0;
    int rc, errcode;
    PCRE2_SIZE erroff;

    if (len == 0) {
        snprintf(err, errlen, "empty format");
        return -1;
    }
    while (i < len) {
        unsigned char c = (unsigned char)src[i];
        size_t start = i, nstart, nlen;
        const known_var *k;
        int prev, next;

        if (c != '$') {
            if (add_literal(&b, c) < 0)
                goto oom;
            i++;
            continue;
        }
        if (i + 1 < len && src[i + 1] == '{') {
            nstart = i + 2;
            for (i = nstart; i < len && src[i] != '}'; i++)
                ;
            if (i >= len) {
                snprintf(err, errlen, "unterminated '${' at byte %zu", start + 1);
                goto fail;
            }
            nlen = i - nstart;
            i++;
        } else {
            nstart = i + 1;
            for (i = nstart; i < len; i++) {
                unsigned char d = (unsigned char)src[i];
                if (!(d == '_' || (d >= '0' && d <= '9') || (d >= 'a' && d <= 'z')
                      || (d >= 'A' && d <= 'Z')))
                    break;
            }
            nlen = i - nstart;
        }
        if (nlen == 0) {
            snprintf(err, errlen, "'$' without a variable name at byte %zu", start + 1);
            goto fail;
        }
        {
            size_t j;
            for (j = nstart; j < nstart + nlen; j++) {
                unsigned char d = (unsigned char)src[j];
                if (!(d == '_' || (d >= '0' && d <= '9') || (d >= 'a' && d <= 'z')
                      || (d >= 'A' && d <= 'Z'))) {
                    snprintf(err, errlen, "bad variable name '${%.*s}' at byte %zu",
                             (int)(nlen > 40 ? 40 : nlen), src + nstart, start + 1);
                    goto fail;
                }
            }
        }
        if (f->nvars >= MAX_VARS) {
            snprintf(err, errlen, "too many variables (max %d) at '$%.*s', byte %zu", MAX_VARS,
                     (int)(nlen > 40 ? 40 : nlen), src + nstart, start + 1);
            goto fail;
        }
        f->names[f->nvars] = malloc(nlen + 1);
        if (f->names[f->nvars] == NULL)
            goto oom;
        memcpy(f->names[f->nvars], src + nstart, nlen);
        f->names[f->nvars][nlen] = '\0';
        k = find_known(src + nstart, nlen);
        f->roles[f->nvars] = k != NULL ? k->role : F_NONE;
        f->nvars++;
        if (k != NULL && k->role != F_NONE && f->role_group[k->role] == 0)
            f->role_group[k->role] = f->nvars;

        prev = start > 0 ? (unsigned char)src[start - 1] : -1;
        next = i >= len ? -1 : src[i] == '$' ? -2 : (unsigned char)src[i];
        if (buf_adds(&b, "(") < 0)
            goto oom;
        if (k == NULL || k->cls == P_TEXT)
            rc = text_pattern(&b, prev, next);
        else if (k->cls == P_ADDR && next >= 0 && strchr(ADDR_CHARS, next) != NULL && next != 0)
            rc = buf_adds(&b, ADDR_BACKTRACK);   /* $remote_addr:$remote_port */
        else
            rc = buf_adds(&b, class_patterns[k->cls]);
        if (rc < 0 || buf_adds(&b, ")") < 0)
            goto oom;
    }
    if (buf_add(&b, "", 1) < 0)
        goto oom;
    f->pattern = b.p;
    f->code = pcre2_compile((PCRE2_SPTR)b.p, b.len - 1,
                            PCRE2_ANCHORED | PCRE2_ENDANCHORED | PCRE2_DOTALL, &errcode, &erroff,
                            NULL);
    if (f->code == NULL) {
        char msg[256];
        pcre2_get_error_message(errcode, (PCRE2_UCHAR *)msg, sizeof msg);
        snprintf(err, errlen, "pcre2: %s at offset %zu of the generated pattern", msg,
                 (size_t)erroff);
        format_free(f);
        return -1;
    }
    if (!lproc_nojit())
        pcre2_jit_compile(f->code, PCRE2_JIT_COMPLETE);   /* falls back to the interpreter */
    return 0;
oom:
    snprintf(err, errlen, "out of memory");
fail:
    free(b.p);
    f->pattern = NULL;
    format_free(f);
    return -1;
}

/* ------------------------------------------------------------------------------------------ */
/* Lua: format objects (for tests and tools)                                                   */
/* ------------------------------------------------------------------------------------------ */

static format *check_format(lua_State *L, const char *fname)
{
    format *f = luaL_checkudata(L, 1, FORMAT_MT);
    if (f->code == NULL)
        luaL_error(L, "logfmt.%s: format is closed", fname);
    return f;
}

/* logfmt.compile(fmt) -> format  (raises "logfmt.compile: why") */
static int l_compile(lua_State *L)
{
    size_t len;
    const char *src = luaL_checklstring(L, 1, &len);
    char err[256];
    format *f = lua_newuserdatauv(L, sizeof *f, 0);
    memset(f, 0, sizeof *f);
    luaL_setmetatable(L, FORMAT_MT);
    if (format_compile(f, src, len, err, sizeof err) < 0)
        return luaL_error(L, "logfmt.compile: %s", err);
    return 1;
}

/* format:pattern() -> the generated PCRE2 pattern (compiled anchored at both ends, DOTALL) */
static int f_pattern(lua_State *L)
{
    format *f = check_format(L, "pattern");
    lua_pushstring(L, f->pattern);
    return 1;
}

/* format:variables() -> {name, ...} in the order of the format (one per occurrence) */
static int f_variables(lua_State *L)
{
    format *f = check_format(L, "variables");
    int i;
    lua_createtable(L, f->nvars, 0);
    for (i = 0; i < f->nvars; i++) {
        lua_pushstring(L, f->names[i]);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

/* format:match(line) -> {name = value, ...} | nil  (first occurrence of a name wins) */
static int f_match(lua_State *L)
{
    format *f = check_format(L, "match");
    size_t len;
    const char *line = luaL_checklstring(L, 2, &len);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(f->code, NULL);
    PCRE2_SIZE *ov;
    int rc, i;
    if (md == NULL)
        return luaL_error(L, "logfmt.match: out of memory");
    rc = pcre2_match(f->code, (PCRE2_SPTR)line, len, 0, 0, md, NULL);
    if (rc < 0) {
        pcre2_match_data_free(md);
        if (rc == PCRE2_ERROR_NOMATCH) {
            lua_pushnil(L);
            return 1;
        }
        return luaL_error(L, "logfmt.match: pcre2 error %d", rc);
    }
    ov = pcre2_get_ovector_pointer(md);
    lua_createtable(L, 0, f->nvars);
    for (i = f->nvars - 1; i >= 0; i--) {   /* backwards: the first occurrence wins */
        if (ov[2 * (i + 1)] == PCRE2_UNSET)
            continue;
        lua_pushlstring(L, line + ov[2 * (i + 1)], ov[2 * (i + 1) + 1] - ov[2 * (i + 1)]);
        lua_setfield(L, -2, f->names[i]);
    }
    pcre2_match_data_free(md);
    return 1;
}

/* format:close()  (safe twice; also __gc and __close) */
static int f_close(lua_State *L)
{
    format *f = luaL_checkudata(L, 1, FORMAT_MT);
    format_free(f);
    return 0;
}

static int f_tostring(lua_State *L)
{
    format *f = luaL_checkudata(L, 1, FORMAT_MT);
    if (f->code == NULL)
        lua_pushliteral(L, "logfmt.format (closed)");
    else
        lua_pushfstring(L, "logfmt.format (%d variables)", f->nvars);
    return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* Columns and their SQL types                                                                */
/* ------------------------------------------------------------------------------------------ */

enum { T_STR, T_INT, T_DEC, T_DBL, T_BOOL, T_DATETIME, T_DATE, T_TIME };

typedef struct column {
    char *name;
    char *sqltype;
    char *key;              /* ,"name": for JSON */
    size_t keylen;
    int type;
    int nullable;
    size_t maxchars;        /* T_STR: characters (VARCHAR) */
    size_t maxbytes;        /* T_STR: bytes (TEXT types, and 4 * VARCHAR) */
    int64_t imin, imax;     /* T_INT */
    int prec, scale;        /* T_DEC */
} column;

/* The standard clean_log columns, in order (sql/schema.sql declares the same). */
enum {
    C_ID, C_TIMESTAMP, C_YEAR, C_MONTH, C_DAY, C_DOW, C_TIME, C_IP, C_COUNTRY, C_COUNTRY_CODE,
    C_CITY, C_SESSION, C_USER, C_IS_EMAIL, C_EMAIL_DOMAIN, C_METHOD, C_URL, C_SCHEMA, C_HOST,
    C_PORT, C_PATH, C_QUERY, C_REST_SESSION, C_PROTOCOL, C_STATUS, C_STATUS_VERBOSE, C_SIZE,
    C_SIZE_KB, C_SIZE_MB, C_REFERRER, C_UA, C_BROWSER, C_OS, C_DEVICE, C_REQUEST_TIME, C_VHOST,
    N_STD
};

static const struct std_column {
    const char *name, *type;
    int nullable;
} std_columns[N_STD] = {
    {"id", "CHAR(64)", 0},
    {"timestamp", "DATETIME", 1},
    {"year", "SMALLINT", 1},
    {"month", "TINYINT", 1},
    {"day", "TINYINT", 1},
    {"day_of_week", "VARCHAR(9)", 1},
    {"time", "TIME", 1},
    {"ip", "VARCHAR(64)", 1},
    {"country", "VARCHAR(128)", 1},
    {"country_code", "CHAR(2)", 1},
    {"city", "VARCHAR(128)", 1},
    {"session", "VARCHAR(255)", 1},
    {"user", "VARCHAR(255)", 1},
    {"is_email", "BOOLEAN", 0},
    {"email_domain", "VARCHAR(255)", 1},
    {"rest_method", "VARCHAR(32)", 1},
    {"url", "MEDIUMTEXT", 1},
    {"schema", "VARCHAR(32)", 1},
    {"host", "VARCHAR(255)", 1},
    {"port", "SMALLINT UNSIGNED", 1},
    {"path", "MEDIUMTEXT", 1},
    {"query", "MEDIUMTEXT", 1},
    {"rest_session", "VARCHAR(255)", 1},
    {"protocol", "VARCHAR(16)", 1},
    {"status", "SMALLINT UNSIGNED", 1},
    {"status_verbose", "VARCHAR(64)", 1},
    {"size_bytes", "BIGINT UNSIGNED", 1},
    {"size_kilo_bytes", "DECIMAL(26,10)", 1},
    {"size_mega_bytes", "DECIMAL(33,20)", 1},
    {"referrer", "MEDIUMTEXT", 1},
    {"user_agent", "MEDIUMTEXT", 1},
    {"browser", "VARCHAR(64)", 1},
    {"os", "VARCHAR(64)", 1},
    {"device", "VARCHAR(16)", 1},
    {"request_time", "DECIMAL(12,3)", 1},
    {"vhost", "VARCHAR(255)", 1},
};

/* Reads a decimal number at *s into *out (skipping blanks). Returns 0, or -1 if none. */
static int read_num(const char **s, long *out)
{
    char *end;
    while (**s == ' ')
        (*s)++;
    if (**s < '0' || **s > '9')
        return -1;
    errno = 0;
    *out = strtol(*s, &end, 10);
    if (errno != 0)
        return -1;
    *s = end;
    while (**s == ' ')
        (*s)++;
    return 0;
}

/* Fills c's type fields from the SQL type text (case-insensitive): CHAR/VARCHAR(n),
 * TINYTEXT/TEXT/MEDIUMTEXT/LONGTEXT, TINYINT/SMALLINT/MEDIUMINT/INT/INTEGER/BIGINT [(n)]
 * [UNSIGNED], BOOLEAN/BOOL, DECIMAL/NUMERIC(p[,s]), DOUBLE/FLOAT/REAL, DATETIME, DATE, TIME.
 * Returns 0, or -1 with err filled. */
static int parse_sqltype(column *c, const char *type, char *err, size_t errlen)
{
    static const struct { const char *name; int type; int64_t lo, hi, uhi; size_t bytes; } t[] = {
        {"VARCHAR", T_STR, 0, 0, 0, 0}, {"CHAR", T_STR, 0, 0, 0, 0},
        {"TINYTEXT", T_STR, 0, 0, 0, 255}, {"TEXT", T_STR, 0, 0, 0, 65535},
        {"MEDIUMTEXT", T_STR, 0, 0, 0, 16777215}, {"LONGTEXT", T_STR, 0, 0, 0, 4294967295u},
        {"TINYINT", T_INT, -128, 127, 255, 0}, {"SMALLINT", T_INT, -32768, 32767, 65535, 0},
        {"MEDIUMINT", T_INT, -8388608, 8388607, 16777215, 0},
        {"INTEGER", T_INT, INT32_MIN, INT32_MAX, UINT32_MAX, 0},
        {"INT", T_INT, INT32_MIN, INT32_MAX, UINT32_MAX, 0},
        {"BIGINT", T_INT, INT64_MIN, INT64_MAX, INT64_MAX, 0},
        {"BOOLEAN", T_BOOL, 0, 0, 0, 0}, {"BOOL", T_BOOL, 0, 0, 0, 0},
        {"DECIMAL", T_DEC, 0, 0, 0, 0}, {"NUMERIC", T_DEC, 0, 0, 0, 0},
        {"DOUBLE", T_DBL, 0, 0, 0, 0}, {"FLOAT", T_DBL, 0, 0, 0, 0}, {"REAL", T_DBL, 0, 0, 0, 0},
        {"DATETIME", T_DATETIME, 0, 0, 0, 0}, {"DATE", T_DATE, 0, 0, 0, 0},
        {"TIME", T_TIME, 0, 0, 0, 0},
        {NULL, 0, 0, 0, 0, 0},
    };
    const char *s = type;
    size_t n = 0;
    long a = -1, b = -1;
    int i, unsig = 0;

    while (s[n] != '\0' && ((s[n] >= 'A' && s[n] <= 'Z') || (s[n] >= 'a' && s[n] <= 'z')))
        n++;
    for (i = 0; t[i].name != NULL; i++)
        if (strlen(t[i].name) == n && strncasecmp(t[i].name, s, n) == 0)
            break;
    if (t[i].name == NULL)
        goto bad;
    s += n;
    while (*s == ' ')
        s++;
    if (*s == '(') {
        s++;
        if (read_num(&s, &a) < 0)
            goto bad;
        if (*s == ',') {
            s++;
            if (read_num(&s, &b) < 0)
                goto bad;
        }
        if (*s++ != ')')
            goto bad;
        while (*s == ' ')
            s++;
    }
    if (strncasecmp(s, "UNSIGNED", 8) == 0 && t[i].type == T_INT) {
        unsig = 1;
        s += 8;
        while (*s == ' ')
            s++;
    }
    if (*s != '\0')
        goto bad;
    c->type = t[i].type;
    switch (c->type) {
    case T_STR:
        if (t[i].bytes == 0) {               /* CHAR / VARCHAR: length required */
            if (a < 1 || a > 65535 || b >= 0)
                goto bad;
            c->maxchars = (size_t)a;
            c->maxbytes = 4 * (size_t)a;
        } else {
            if (a >= 0)
                goto bad;
            c->maxchars = (size_t)-1;
            c->maxbytes = t[i].bytes;
        }
        break;
    case T_INT:
        if (b >= 0)
            goto bad;
        c->imin = unsig ? 0 : t[i].lo;
        c->imax = unsig ? t[i].uhi : t[i].hi;
        break;
    case T_DEC:
        c->prec = a < 0 ? 10 : (int)a;
        c->scale = b < 0 ? 0 : (int)b;
        if (c->prec < 1 || c->prec > 65 || c->scale > 30 || c->scale > c->prec)
            goto bad;
        break;
    default:
        if (a >= 0)
            goto bad;
    }
    return 0;
bad:
    snprintf(err, errlen, "unsupported SQL type '%.60s'", type);
    return -1;
}

/* Fills c from a name and an SQL type (copies both). Returns 0, or -1 with err filled. */
static int column_init(column *c, const char *name, const char *type, int nullable, char *err,
                       size_t errlen)
{
    memset(c, 0, sizeof *c);
    if (parse_sqltype(c, type, err, errlen) < 0)
        return -1;
    c->nullable = nullable;
    c->name = strdup(name);
    c->sqltype = strdup(type);
    c->keylen = strlen(name) + 4;
    c->key = malloc(c->keylen + 1);
    if (c->name == NULL || c->sqltype == NULL || c->key == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    snprintf(c->key, c->keylen + 1, ",\"%s\":", name);
    return 0;
}

static void column_free(column *c)
{
    free(c->name);
    free(c->sqltype);
    free(c->key);
    c->name = c->sqltype = c->key = NULL;
}

/* Pushes {name=, type=, null=} for column c. */
static void push_column(lua_State *L, const char *name, const char *type, int nullable)
{
    lua_createtable(L, 0, 3);
    lua_pushstring(L, name);
    lua_setfield(L, -2, "name");
    lua_pushstring(L, type);
    lua_setfield(L, -2, "type");
    lua_pushboolean(L, nullable);
    lua_setfield(L, -2, "null");
}

/* logfmt.columns() -> {{name=, type=, null=}, ...}: the standard clean_log columns in order */
static int l_columns(lua_State *L)
{
    int i;
    lua_createtable(L, N_STD, 0);
    for (i = 0; i < N_STD; i++) {
        push_column(L, std_columns[i].name, std_columns[i].type, std_columns[i].nullable);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* Arena: per-line scratch memory, reset at the start of every line                           */
/* ------------------------------------------------------------------------------------------ */

typedef struct block {
    struct block *next;
    size_t cap, used;
    char data[];
} block;

/* n bytes from the arena (head block), or NULL when out of memory. */
static char *arena_alloc(block **head, size_t n)
{
    block *b = *head;
    if (b == NULL || b->cap - b->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        b = malloc(sizeof *b + cap);
        if (b == NULL)
            return NULL;
        b->cap = cap;
        b->used = 0;
        b->next = *head;
        *head = b;
    }
    b->used += n;
    return b->data + b->used - n;
}

/* Keeps the newest block (emptied) and frees the others. */
static void arena_reset(block **head)
{
    block *b = *head, *next;
    if (b == NULL)
        return;
    for (next = b->next; next != NULL; ) {
        block *t = next->next;
        free(next);
        next = t;
    }
    b->next = NULL;
    b->used = 0;
}

static void arena_free(block **head)
{
    arena_reset(head);
    free(*head);
    *head = NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* UTF-8                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* Length of the valid UTF-8 sequence at p (n bytes left), or -k when its first k bytes are
 * a maximal invalid subpart (k >= 1). *cp gets the code point of a valid sequence. */
static int utf8_next(const unsigned char *p, size_t n, uint32_t *cp)
{
    unsigned char c = p[0], lo = 0x80, hi = 0xBF;
    int need, i;
    uint32_t v;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        need = 1;
        v = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        v = c & 0x0F;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        v = c & 0x07;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        return -1;
    }
    for (i = 1; i <= need; i++) {
        if ((size_t)i >= n || p[i] < lo || p[i] > hi)
            return -i;
        v = (v << 6) | (p[i] & 0x3F);
        lo = 0x80;
        hi = 0xBF;
    }
    *cp = v;
    return need + 1;
}

/* Is cp a control character (C0, DEL or C1)? */
static int is_control(uint32_t cp)
{
    return cp < 0x20 || (cp >= 0x7F && cp <= 0x9F);
}

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* Non-zero when one of the 8 bytes in x is not printable ASCII (< 0x20, 0x7f or >= 0x80). */
static uint64_t word_unsafe(uint64_t x)
{
    uint64_t del = x ^ (0x7f * ONES);
    return (x | ((x - 0x20 * ONES) & ~x) | ((del - ONES) & ~del)) & HIGHS;
}

/* Number of leading bytes of p (at most n) that are printable ASCII and, with json set,
 * neither '"' nor '\'. */
static size_t plain_prefix(const unsigned char *p, size_t n, int json)
{
    size_t i = 0;
#ifdef __SSE2__
    /* 16 bytes at a time: as signed bytes, everything >= 0x80 is below 0x20 too. */
    const __m128i space = _mm_set1_epi8(0x20), del = _mm_set1_epi8(0x7f);
    const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\');
    for (; i + 16 <= n; i += 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(p + i));
        __m128i bad = _mm_or_si128(_mm_cmplt_epi8(x, space), _mm_cmpeq_epi8(x, del));
        int mask;
        if (json)
            bad = _mm_or_si128(bad, _mm_or_si128(_mm_cmpeq_epi8(x, quote),
                                                 _mm_cmpeq_epi8(x, bslash)));
        mask = _mm_movemask_epi8(bad);
        if (mask != 0)
            return i + (size_t)__builtin_ctz((unsigned)mask);
    }
#endif
    for (; i + 8 <= n; i += 8) {
        uint64_t x, bad;
        memcpy(&x, p + i, 8);
        bad = word_unsafe(x);
        if (json) {
            uint64_t q = x ^ ('"' * ONES), b = x ^ ('\\' * ONES);
            bad |= (((q - ONES) & ~q) | ((b - ONES) & ~b)) & HIGHS;
        }
        if (bad)
            break;
    }
    for (; i < n; i++) {
        unsigned char c = p[i];
        if (c < 0x20 || c >= 0x7f || (json && (c == '"' || c == '\\')))
            break;
    }
    return i;
}

/* ------------------------------------------------------------------------------------------ */
/* The engine                                                                                 */
/* ------------------------------------------------------------------------------------------ */

enum { V_NULL, V_STR, V_INT, V_BOOL, V_DEC, V_DBL };

/* One column value of the current line. Strings point into the line, the arena or static
 * data; they live until the next line. V_DEC is decimal text (a JSON number). */
typedef struct value {
    int kind;
    int plain;              /* V_STR: printable ASCII without '"' and '\\' (JSON as is) */
    const char *s;
    size_t len;
    int64_t i;
    double d;
} value;

/* A user-agent rule: a PCRE2 pattern, or a plain substring when the pattern has no
 * metacharacter, and the name it gives. */
typedef struct ua_rule {
    pcre2_code *code;
    char *lit;
    size_t litlen;
    char *name;
    size_t namelen;
} ua_rule;

enum { UA_BROWSER, UA_OS, UA_DEVICE, N_UA };
static const char *const ua_kinds[N_UA] = {"browser", "os", "device"};

typedef struct ua_entry {
    char *key;              /* the user agent as logged (NULL: empty slot) */
    size_t keylen;
    short rule[N_UA];       /* index of the matching rule, -1 none */
} ua_entry;

/* A GeoIP answer merged over the databases, cached per engine by address text. The names are
 * copies: a database may be closed while the engine lives, and its memory goes with it. */
#define GEO_NAME_MAX 96         /* longer names are not cached */
enum { GEO_CC = 1, GEO_COUNTRY = 2, GEO_CITY = 4 };
typedef struct geo_entry {
    char ip[46];
    unsigned char len;      /* 0: empty slot */
    unsigned char has;      /* GEO_* of the fields present */
    unsigned char cclen, countrylen, citylen;
    char cc[8];
    char country[GEO_NAME_MAX];
    char city[GEO_NAME_MAX];
} geo_entry;

#define DEFAULT_GEO_CACHE 16384

typedef struct engine {
    int closed;
    int nformats;
    format *formats;
    int nvarnames;              /* distinct variable names over all formats */
    const char **varnames;      /* borrowed from the formats */
    unsigned char *vargroup;    /* [format * nvarnames + var]: group number, 0 when absent */
    int *colvar;                /* [custom column]: variable id filling it, -1 none */
    pcre2_match_data *md;        /* formats */
    pcre2_match_data *md_ua;     /* user-agent rules */
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit;
    int ncols;
    column *cols;
    value *vals;
    size_t max_line;
    int ngeo;
    lproc_geoip *geo[MAX_GEOIP];
    int nua[N_UA];
    ua_rule *ua[N_UA];
    char *default_device;
    ua_entry *uacache;
    size_t uacache_n;           /* slots (a power of two), 0: no cache */
    geo_entry *geocache;
    size_t geocache_n;          /* slots (a power of two), 0: no cache */
    block *arena;
    buf out;                    /* JSON output */
    buf reason;                 /* reject reason of the current line */
    int has_map;
    /* the current line */
    const char *line;
    size_t len;
    int fmt;                    /* matched format, -1 none */
    PCRE2_SIZE *ov;
    int in_map;
    /* counters */
    uint64_t n_lines, n_rows, n_rejects, n_map_errors, ua_hits, ua_misses, geo_hits, geo_misses;
} engine;

/* Raises a memory error (all memory is owned by the engine, so nothing leaks). */
static int oom(lua_State *L)
{
    return luaL_error(L, "logfmt: out of memory");
}

/* Arena memory or a memory error. */
static char *scratch(lua_State *L, engine *e, size_t n)
{
    char *p = arena_alloc(&e->arena, n ? n : 1);
    if (p == NULL)
        oom(L);
    return p;
}

/* Sets the reject reason from a printf format. Returns 0 (the reject result). */
static int reject(engine *e, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof tmp)
        n = sizeof tmp - 1;
    e->reason.len = 0;
    if (buf_add(&e->reason, tmp, (size_t)n) < 0)
        e->reason.len = 0;
    return 0;
}

#define TX_LOWER 1      /* lower-case ASCII letters */
#define TX_COPY 2       /* always copy (p does not outlive the call) */

/* Stores p (n bytes) as the text value of column c: valid UTF-8 with every invalid subpart
 * and control character replaced by U+FFFD, lower-cased (ASCII) with TX_LOWER, cut at the
 * column's size. Zero copy when nothing changes, unless TX_COPY. Raises on memory errors. */
static void set_text(lua_State *L, engine *e, int c, const char *p, size_t n, int flags)
{
    int lower = flags & TX_LOWER;
    const column *col = &e->cols[c];
    value *v = &e->vals[c];
    const unsigned char *s = (const unsigned char *)p;
    size_t i, chars = 0, o = 0;
    char *out;

    v->plain = 0;

    if (lower) {
        for (i = 0; i < n; i++) {
            unsigned char ch = s[i];
            if (ch < 0x20 || ch >= 0x7f || (ch >= 'A' && ch <= 'Z'))
                break;
        }
    } else {
        i = plain_prefix(s, n, 1);
        v->plain = i == n;
        if (i < n)
            i += plain_prefix(s + i, n - i, 0);
    }
    if (i == n && n <= col->maxchars && n <= col->maxbytes) {
        if (flags & TX_COPY) {
            char *copy = scratch(L, e, n);
            memcpy(copy, p, n);
            p = copy;
        }
        v->kind = V_STR;
        v->s = p;
        v->len = n;
        return;
    }
    v->plain = 0;
    out = scratch(L, e, 3 * n);
    i = 0;
    while (i < n && chars < col->maxchars) {
        uint32_t cp;
        int k = utf8_next(s + i, n - i, &cp);
        size_t need = k > 0 && !is_control(cp) ? (size_t)k : 3;
        if (o + need > col->maxbytes)
            break;
        if (k > 0 && !is_control(cp)) {
            if (k == 1 && lower && s[i] >= 'A' && s[i] <= 'Z')
                out[o] = (char)(s[i] + 32);
            else
                memcpy(out + o, s + i, (size_t)k);
            i += (size_t)k;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            i += (size_t)(k > 0 ? k : -k);
        }
        o += need;
        chars++;
    }
    v->kind = V_STR;
    v->s = out;
    v->len = o;
}

/* Sets an integer / boolean / decimal-text value. */
static void set_int(engine *e, int c, int64_t i)
{
    e->vals[c].kind = V_INT;
    e->vals[c].i = i;
}

static void set_dec(engine *e, int c, const char *s, size_t n)
{
    e->vals[c].kind = V_DEC;
    e->vals[c].s = s;
    e->vals[c].len = n;
}

/* Sets a string from static or arena memory known to be clean. */
static void set_raw(engine *e, int c, const char *s, size_t n)
{
    e->vals[c].plain = plain_prefix((const unsigned char *)s, n, 1) == n;
    e->vals[c].kind = V_STR;
    e->vals[c].s = s;
    e->vals[c].len = n;
}

/* Normalizes decimal text p (n bytes: [-]digits[.digits]) for a DECIMAL(prec, scale) into
 * out (DEC_MAX bytes): no leading zeros, rounded half away from zero to scale digits, no
 * trailing fraction zeros, no "-0". Returns the length, or -1 when p is not a decimal or its
 * integer part has more than prec - scale digits. */
#define DEC_MAX 104
static int norm_decimal(const char *p, size_t n, int prec, int scale, char *out)
{
    char t[DEC_MAX];
    size_t i = 0, ib, ie, fb, fe, il, k, tl = 0, s, intend, fend, o = 0, intdigits;
    int neg = 0, zero = 1;

    if (n > 0 && p[0] == '-') {
        neg = 1;
        i = 1;
    }
    ib = i;
    while (i < n && p[i] >= '0' && p[i] <= '9')
        i++;
    ie = i;
    if (ie == ib)
        return -1;
    fb = fe = i;
    if (i < n && p[i] == '.') {
        fb = ++i;
        while (i < n && p[i] >= '0' && p[i] <= '9')
            i++;
        fe = i;
        if (fe == fb)
            return -1;
    }
    if (i != n)
        return -1;
    while (ie - ib > 1 && p[ib] == '0')
        ib++;
    il = ie - ib;
    if (il > (size_t)(prec - scale) + 1)
        return -1;
    t[tl++] = '0';                          /* room for a carry */
    memcpy(t + tl, p + ib, il);
    tl += il;
    for (k = 0; k < (size_t)scale; k++)
        t[tl++] = fb + k < fe ? p[fb + k] : '0';
    if (fb + (size_t)scale < fe && p[fb + scale] >= '5') {
        for (k = tl; k-- > 0; ) {
            if (t[k] != '9') {
                t[k]++;
                break;
            }
            t[k] = '0';
        }
    }
    intend = 1 + il;
    for (s = 0; s < intend - 1 && t[s] == '0'; s++)
        ;
    intdigits = intend - s == 1 && t[s] == '0' ? 0 : intend - s;
    if (intdigits > (size_t)(prec - scale))
        return -1;
    for (fend = tl; fend > intend && t[fend - 1] == '0'; fend--)
        ;
    for (k = s; k < fend; k++)
        if (t[k] != '0')
            zero = 0;
    if (neg && !zero)
        out[o++] = '-';
    memcpy(out + o, t + s, intend - s);
    o += intend - s;
    if (fend > intend) {
        out[o++] = '.';
        memcpy(out + o, t + intend, fend - intend);
        o += fend - intend;
    }
    return (int)o;
}

/* ---- time ---- */

static const char *const day_names[7] = {
    "Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"
};

/* Days since 1970-01-01 of a proleptic Gregorian date. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    int64_t era, yoe, doy, doe;
    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* The date of a day number (inverse of days_from_civil). */
static void civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
    int64_t era, doe, yoe, doy, mp;
    z += 719468;
    era = (z >= 0 ? z : z - 146096) / 146097;
    doe = z - era * 146097;
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

static int days_in_month(int64_t y, int m)
{
    static const int dm[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
        return 29;
    return dm[m - 1];
}

/* Two/four ASCII digits at p (the pattern guarantees digits). */
static int dig2(const char *p)
{
    return (p[0] - '0') * 10 + (p[1] - '0');
}

static int dig4(const char *p)
{
    return dig2(p) * 100 + dig2(p + 2);
}

/* Writes v as exactly n decimal digits (zero-padded) at s. */
static void put_digits(char *s, int v, int n)
{
    while (n-- > 0) {
        s[n] = (char)('0' + v % 10);
        v /= 10;
    }
}

/* Fills the time columns from seconds since the epoch (UTC). Returns 1, or 0 (reject) when
 * the year is outside 1000..9999 (DATETIME's range). */
static int set_time(lua_State *L, engine *e, int64_t t, const char *var, const char *p, size_t n)
{
    int64_t days = t >= 0 ? t / 86400 : -((-t + 86399) / 86400), y;
    int64_t sec = t - days * 86400;
    int m, d;
    char *s;
    civil_from_days(days, &y, &m, &d);
    if (y < 1000 || y > 9999)
        return reject(e, "date out of range in $%s (%.*s)", var, (int)(n > 40 ? 40 : n), p);
    s = scratch(L, e, 20);
    put_digits(s, (int)y, 4);
    s[4] = '-';
    put_digits(s + 5, m, 2);
    s[7] = '-';
    put_digits(s + 8, d, 2);
    s[10] = ' ';
    put_digits(s + 11, (int)(sec / 3600), 2);
    s[13] = ':';
    put_digits(s + 14, (int)(sec / 60 % 60), 2);
    s[16] = ':';
    put_digits(s + 17, (int)(sec % 60), 2);
    set_raw(e, C_TIMESTAMP, s, 19);
    set_raw(e, C_TIME, s + 11, 8);
    set_int(e, C_YEAR, y);
    set_int(e, C_MONTH, m);
    set_int(e, C_DAY, d);
    set_raw(e, C_DOW, day_names[(days % 7 + 11) % 7], strlen(day_names[(days % 7 + 11) % 7]));
    return 1;
}

/* Local date and time plus an offset in minutes east of UTC -> the time columns.
 * Returns 1, or 0 with a reject reason. */
static int set_local_time(lua_State *L, engine *e, int64_t y, int mon, int d, int h, int mi,
                          int s, int off, const char *var, const char *p, size_t n)
{
    if (mon < 1 || mon > 12 || d < 1 || d > days_in_month(y, mon) || h > 23 || mi > 59 || s > 59)
        return reject(e, "impossible date in $%s (%.*s)", var, (int)(n > 40 ? 40 : n), p);
    return set_time(L, e, days_from_civil(y, mon, d) * 86400 + h * 3600 + mi * 60 + s
                    - (int64_t)off * 60, var, p, n);
}

/* $time_local: 01/Nov/2022:00:00:00 -0500 (shape guaranteed by the pattern). */
static int time_local(lua_State *L, engine *e, const char *p, size_t n)
{
    /* The month's three letters, lower-cased, as one number: "nov" = 'n' << 16 | 'o' << 8 | 'v'. */
    static const uint32_t months[12] = {
        0x6a616e, 0x666562, 0x6d6172, 0x617072, 0x6d6179, 0x6a756e,
        0x6a756c, 0x617567, 0x736570, 0x6f6374, 0x6e6f76, 0x646563,
    };
    uint32_t key = (uint32_t)(p[3] | 0x20) << 16 | (uint32_t)(p[4] | 0x20) << 8
                   | (uint32_t)(p[5] | 0x20);
    int mon, oh = dig2(p + 22), om = dig2(p + 24);
    for (mon = 0; mon < 12; mon++)
        if (months[mon] == key)
            break;
    if (oh > 23 || om > 59)
        return reject(e, "impossible date in $time_local (%.*s)", (int)n, p);
    return set_local_time(L, e, dig4(p + 7), mon + 1, dig2(p), dig2(p + 12), dig2(p + 15),
                          dig2(p + 18), (p[21] == '-' ? -1 : 1) * (oh * 60 + om), "time_local",
                          p, n);
}

/* $time_iso8601: 2022-11-01T00:00:00-05:00 or ...Z. */
static int time_iso(lua_State *L, engine *e, const char *p, size_t n)
{
    int off = 0;
    if (n > 20) {
        int oh = dig2(p + 20), om = dig2(p + 23);
        if (oh > 23 || om > 59)
            return reject(e, "impossible date in $time_iso8601 (%.*s)", (int)n, p);
        off = (p[19] == '-' ? -1 : 1) * (oh * 60 + om);
    }
    return set_local_time(L, e, dig4(p), dig2(p + 5), dig2(p + 8), dig2(p + 11), dig2(p + 14),
                          dig2(p + 17), off, "time_iso8601", p, n);
}

/* $msec: seconds since the epoch with a fraction. */
static int time_msec(lua_State *L, engine *e, const char *p, size_t n)
{
    int64_t t = 0;
    size_t i;
    for (i = 0; i < n && p[i] != '.'; i++) {
        if (t > 1000000000000LL)
            return reject(e, "date out of range in $msec (%.*s)", (int)(n > 40 ? 40 : n), p);
        t = t * 10 + (p[i] - '0');
    }
    return set_time(L, e, t, "msec", p, n);
}

/* ---- status ---- */

static const char *status_text(int code)
{
    switch (code) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 102: return "Processing";
    case 103: return "Early Hints";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 205: return "Reset Content";
    case 206: return "Partial Content";
    case 207: return "Multi-Status";
    case 208: return "Already Reported";
    case 226: return "IM Used";
    case 300: return "Multiple Choices";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 305: return "Use Proxy";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 407: return "Proxy Authentication Required";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Content";
    case 423: return "Locked";
    case 424: return "Failed Dependency";
    case 425: return "Too Early";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 444: return "No Response";                         /* nginx */
    case 451: return "Unavailable For Legal Reasons";
    case 494: return "Request Header Too Large";            /* nginx */
    case 495: return "SSL Certificate Error";               /* nginx */
    case 496: return "SSL Certificate Required";            /* nginx */
    case 497: return "HTTP Request Sent to HTTPS Port";     /* nginx */
    case 499: return "Client Closed Request";               /* nginx */
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    case 506: return "Variant Also Negotiates";
    case 507: return "Insufficient Storage";
    case 508: return "Loop Detected";
    case 510: return "Not Extended";
    case 511: return "Network Authentication Required";
    default: return NULL;
    }
}

/* ---- text helpers ---- */

/* Does h (hn bytes) contain nd (nn bytes)? */
static int contains(const char *h, size_t hn, const char *nd, size_t nn)
{
    const char *p, *end;
    if (nn == 0)
        return 1;
    if (hn < nn)
        return 0;
    end = h + hn - nn + 1;
    for (p = h; p < end && (p = memchr(p, nd[0], (size_t)(end - p))) != NULL; p++)
        if (memcmp(p, nd, nn) == 0)
            return 1;
    return 0;
}

static int is_dash(const char *p, size_t n)
{
    return n == 1 && p[0] == '-';
}

/* Is c a token character (RFC 9110 tchar)? */
static int is_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
           || (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* Does p (n bytes) start with the ASCII text lit, ignoring case? */
static int ci_prefix(const char *p, size_t n, const char *lit)
{
    size_t k = strlen(lit);
    return n >= k && strncasecmp(p, lit, k) == 0;
}

/* ---- URL ---- */

/* Splits an authority (userinfo already removed) into host and port. Returns 0, or -1 when
 * the port is not a number in 0..65535 or a '[' has no ']'. *port is -1 when absent. */
static int split_hostport(const char *a, size_t n, const char **h, size_t *hn, long *port)
{
    const char *pp = NULL, *end = a + n;
    size_t pn = 0, k;
    *port = -1;
    if (n > 0 && a[0] == '[') {
        const char *close = memchr(a, ']', n);
        if (close == NULL)
            return -1;
        *h = a + 1;
        *hn = (size_t)(close - a - 1);
        if (close + 1 < end) {
            if (close[1] != ':')
                return -1;
            pp = close + 2;
            pn = (size_t)(end - pp);
        }
    } else {
        const char *colon = NULL, *q;
        int ncolons = 0;
        for (q = a; q < end; q++)
            if (*q == ':') {
                colon = q;
                ncolons++;
            }
        *h = a;
        *hn = n;
        if (ncolons == 1) {             /* a bare IPv6 address has no port */
            *hn = (size_t)(colon - a);
            pp = colon + 1;
            pn = (size_t)(end - pp);
        }
    }
    if (pn > 0) {
        long v = 0;
        if (pn > 5)
            return -1;
        for (k = 0; k < pn; k++) {
            if (pp[k] < '0' || pp[k] > '9')
                return -1;
            v = v * 10 + (pp[k] - '0');
        }
        if (v > 65535)
            return -1;
        *port = v;
    }
    return 0;
}

/* Sets rest_session from a ";jsessionid=" path parameter or a session query parameter. */
static void find_session(lua_State *L, engine *e, const char *path, size_t pn, const char *q,
                         size_t qn)
{
    static const char *const names[] = {"sid=", "session=", "sessionid=", "jsessionid=",
                                        "phpsessid=", NULL};
    size_t i, j;
    for (i = 0; i < pn; i++) {
        if (path[i] == ';' && ci_prefix(path + i + 1, pn - i - 1, "jsessionid=")) {
            i += 12;
            for (j = i; j < pn && path[j] != ';' && path[j] != '/'; j++)
                ;
            if (j > i) {
                set_text(L, e, C_REST_SESSION, path + i, j - i, 0);
                return;
            }
        }
    }
    for (i = 0; q != NULL && i < qn; i = j + 1) {
        int k;
        for (j = i; j < qn && q[j] != '&' && q[j] != ';'; j++)
            ;
        for (k = 0; names[k] != NULL; k++) {
            size_t l = strlen(names[k]);
            if (ci_prefix(q + i, j - i, names[k]) && j - i > l) {
                set_text(L, e, C_REST_SESSION, q + i + l, j - i - l, 0);
                return;
            }
        }
    }
}

/* Sets path, query and rest_session from p (n bytes): path[?query][#fragment]. */
static void set_path_query(lua_State *L, engine *e, const char *p, size_t n)
{
    const char *hash = memchr(p, '#', n), *q;
    size_t pn, qn = 0;
    if (hash != NULL)
        n = (size_t)(hash - p);
    q = memchr(p, '?', n);
    pn = q != NULL ? (size_t)(q - p) : n;
    if (pn > 0)
        set_text(L, e, C_PATH, p, pn, 0);
    if (q != NULL) {
        q++;
        qn = (size_t)(p + n - q);
        set_text(L, e, C_QUERY, q, qn, 0);
    }
    find_session(L, e, p, pn, q, qn);
}

/* Sets host and port from an authority (with optional userinfo, which is dropped). */
static void set_authority(lua_State *L, engine *e, const char *a, size_t n)
{
    const char *h, *at;
    size_t hn;
    long port;
    while ((at = memchr(a, '@', n)) != NULL) {
        n -= (size_t)(at + 1 - a);
        a = at + 1;
    }
    if (split_hostport(a, n, &h, &hn, &port) < 0)
        return;
    if (hn > 0)
        set_text(L, e, C_HOST, h, hn, 1);
    if (port >= 0)
        set_int(e, C_PORT, port);
}

/* Splits a request target into schema, host, port, path, query and rest_session:
 * absolute-form (scheme://authority/path?query), origin-form (/path?query), authority-form
 * (host:port, for CONNECT) and asterisk-form (*). Anything else leaves them NULL. */
static void parse_url(lua_State *L, engine *e, const char *u, size_t n, int connect)
{
    size_t i = 0;
    if (n == 0)
        return;
    if (u[0] == '/') {
        set_path_query(L, e, u, n);
        return;
    }
    if (n == 1 && u[0] == '*') {
        set_raw(e, C_PATH, "*", 1);
        return;
    }
    if ((u[0] >= 'a' && u[0] <= 'z') || (u[0] >= 'A' && u[0] <= 'Z')) {
        for (i = 1; i < n; i++) {
            unsigned char c = (unsigned char)u[i];
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
                  || c == '+' || c == '-' || c == '.'))
                break;
        }
        if (i + 2 < n + 0 && u[i] == ':' && u[i + 1] == '/' && u[i + 2] == '/') {
            size_t a = i + 3, b;
            set_text(L, e, C_SCHEMA, u, i, 1);
            for (b = a; b < n && u[b] != '/' && u[b] != '?' && u[b] != '#'; b++)
                ;
            set_authority(L, e, u + a, b - a);
            if (b < n)
                set_path_query(L, e, u + b, n - b);
            return;
        }
    }
    if (connect)
        set_authority(L, e, u, n);
}

/* Is p (n bytes) a protocol like HTTP/1.1 or HTTP/2? */
static int is_protocol(const char *p, size_t n)
{
    size_t i = 0, d;
    while (i < n && p[i] >= 'A' && p[i] <= 'Z')
        i++;
    if (i == 0 || i >= n || p[i] != '/')
        return 0;
    for (d = ++i; i < n && p[i] >= '0' && p[i] <= '9'; i++)
        ;
    if (i == d)
        return 0;
    if (i < n && p[i] == '.') {
        for (d = ++i; i < n && p[i] >= '0' && p[i] <= '9'; i++)
            ;
        if (i == d)
            return 0;
    }
    return i == n;
}

/* $request -> rest_method, url, protocol and the URL parts. A request that is not
 * "METHOD TARGET PROTOCOL" keeps url = the request as logged and the rest NULL. */
static void do_request(lua_State *L, engine *e, const char *p, size_t n)
{
    const char *sp1 = memchr(p, ' ', n), *sp2 = NULL;
    size_t i = n;
    while (i > 0 && p[i - 1] != ' ')
        i--;
    if (i > 0)
        sp2 = p + i - 1;                        /* the last space (p - 1 would be out of bounds) */
    if (sp1 != NULL && sp2 != NULL && sp2 > sp1 + 1 && sp1 > p
        && is_protocol(sp2 + 1, (size_t)(p + n - sp2 - 1))) {
        for (i = 0; p + i < sp1 && is_tchar((unsigned char)p[i]); i++)
            ;
        if (p + i == sp1) {
            size_t un = (size_t)(sp2 - sp1 - 1);
            set_text(L, e, C_METHOD, p, i, 0);
            set_text(L, e, C_URL, sp1 + 1, un, 0);
            set_text(L, e, C_PROTOCOL, sp2 + 1, (size_t)(p + n - sp2 - 1), 0);
            parse_url(L, e, sp1 + 1, un, i == 7 && memcmp(p, "CONNECT", 7) == 0);
            return;
        }
    }
    set_text(L, e, C_URL, p, n, 0);
}

/* $remote_user -> user, is_email, email_domain. An address has at most 254 bytes (RFC 5321),
 * so a longer user, which the user column would also cut, is never an e-mail address. */
static void do_user(lua_State *L, engine *e, const char *p, size_t n)
{
    const char *at, *d;
    size_t i, dn;
    int dots = 0, label = 0;
    if (n == 0 || is_dash(p, n))
        return;
    set_text(L, e, C_USER, p, n, 0);
    if (n > 254)
        return;
    at = memchr(p, '@', n);
    if (at == NULL || at == p || memchr(at + 1, '@', (size_t)(p + n - at - 1)) != NULL)
        return;
    for (i = 0; p + i < at; i++)
        if ((unsigned char)p[i] <= 0x20 || p[i] == 0x7f || p[i] == '"')
            return;
    d = at + 1;
    dn = (size_t)(p + n - d);
    for (i = 0; i < dn; i++) {
        unsigned char c = (unsigned char)d[i];
        if (c == '.') {
            if (label == 0)
                return;
            dots++;
            label = 0;
        } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
                   || c == '-' || c >= 0x80) {
            label++;
        } else {
            return;
        }
    }
    if (dots == 0 || label == 0)
        return;
    e->vals[C_IS_EMAIL].i = 1;
    set_text(L, e, C_EMAIL_DOMAIN, d, dn, 1);
}

/* Decimal text of v / 2^shift (exact) into out. Returns the length. */
static size_t exact_fraction(uint64_t v, int shift, char *out)
{
    uint64_t mask = ((uint64_t)1 << shift) - 1, f = v & mask, ip = v >> shift;
    char tmp[24];
    int n = 0, k = 0;
    do {
        tmp[k++] = (char)('0' + ip % 10);
        ip /= 10;
    } while (ip != 0);
    while (k > 0)
        out[n++] = tmp[--k];
    if (f != 0) {
        out[n++] = '.';
        while (f != 0) {
            f *= 10;
            out[n++] = (char)('0' + (f >> shift));
            f &= mask;
        }
    }
    return (size_t)n;
}

/* $body_bytes_sent / $bytes_sent -> size_bytes, size_kilo_bytes, size_mega_bytes ('-' = 0).
 * Returns 1, or 0 (reject) when the number does not fit a signed 64-bit integer. */
static int do_size(lua_State *L, engine *e, const char *p, size_t n, const char *var)
{
    uint64_t v = 0;
    size_t i;
    char *s;
    if (!is_dash(p, n)) {
        for (i = 0; i < n; i++) {
            if (v > (uint64_t)(INT64_MAX - 9) / 10 && (v > (uint64_t)INT64_MAX / 10
                || (uint64_t)(p[i] - '0') > (uint64_t)INT64_MAX - v * 10))
                return reject(e, "$%s out of range (%.*s)", var, (int)(n > 40 ? 40 : n), p);
            v = v * 10 + (uint64_t)(p[i] - '0');
        }
    }
    set_int(e, C_SIZE, (int64_t)v);
    s = scratch(L, e, 96);
    set_dec(e, C_SIZE_KB, s, exact_fraction(v, 10, s));
    set_dec(e, C_SIZE_MB, s + 40, exact_fraction(v, 20, s + 40));
    return 1;
}

/* $request_time -> request_time (DECIMAL(12,3)). Returns 1, or 0 (reject) when too large. */
static int do_request_time(lua_State *L, engine *e, const char *p, size_t n)
{
    char *s;
    int k;
    if (is_dash(p, n))
        return 1;
    s = scratch(L, e, DEC_MAX);
    k = norm_decimal(p, n, e->cols[C_REQUEST_TIME].prec, e->cols[C_REQUEST_TIME].scale, s);
    if (k < 0)
        return reject(e, "$request_time out of range (%.*s)", (int)(n > 40 ? 40 : n), p);
    set_dec(e, C_REQUEST_TIME, s, (size_t)k);
    return 1;
}

/* $host / $server_name / $http_host -> vhost (lower-case, without a port). */
static void do_vhost(lua_State *L, engine *e, const char *p, size_t n)
{
    const char *h;
    size_t hn;
    long port;
    if (n == 0 || is_dash(p, n))
        return;
    if (split_hostport(p, n, &h, &hn, &port) < 0 || hn == 0) {
        h = p;
        hn = n;
    }
    set_text(L, e, C_VHOST, h, hn, 1);
}

/* ---- GeoIP ---- */

/* ---- user agent ---- */

/* Does rule r match the user agent p (n bytes)? */
static int ua_match(engine *e, const ua_rule *r, const char *p, size_t n, pcre2_match_data *md)
{
    if (r->code == NULL)
        return contains(p, n, r->lit, r->litlen);
    return pcre2_match(r->code, (PCRE2_SPTR)p, n, 0, 0, md, e->mctx) >= 0;
}

/* A hash of p (n bytes), 8 bytes at a time (FNV-style multiply, then a final mix). */
static uint64_t hash_bytes(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ULL ^ n, x;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&x, p + i, 8);
        h = (h ^ x) * 1099511628211ULL;
        h ^= h >> 29;
    }
    for (; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 1099511628211ULL;
    h ^= h >> 32;
    return h * 0x9E3779B97F4A7C15ULL;
}

/* Copies one field of an answer into a cache slot. Returns 0, or -1 when it does not fit. */
static int geo_keep(char *dst, size_t cap, unsigned char *dlen, unsigned char *has, int flag,
                    const char *p, size_t n)
{
    if (p == NULL)
        return 0;
    if (n > cap)
        return -1;
    memcpy(dst, p, n);
    *dlen = (unsigned char)n;
    *has |= (unsigned char)flag;
    return 0;
}

/* ip -> country_code, country, city: the country (code and name together) from the first
 * database that knows the address's country, the city from the first that knows its city.
 * Merged answers are cached per engine (direct-mapped, keyed by the address text). Values are
 * copied into the line's arena: nothing refers to a database's memory once this returns (the
 * mapping function may close a database). */
static void do_geo(lua_State *L, engine *e, const char *ip, size_t n)
{
    lproc_geo m;
    geo_entry *slot = NULL;
    int i;
    if (e->ngeo == 0)
        return;
    memset(&m, 0, sizeof m);
    if (e->geocache_n > 0 && n < sizeof slot->ip) {
        slot = &e->geocache[hash_bytes(ip, n) & (e->geocache_n - 1)];
        if (slot->len == n && memcmp(slot->ip, ip, n) == 0) {
            e->geo_hits++;
            if (slot->has & GEO_CC) {
                m.country_code = slot->cc;
                m.country_code_len = slot->cclen;
            }
            if (slot->has & GEO_COUNTRY) {
                m.country = slot->country;
                m.country_len = slot->countrylen;
            }
            if (slot->has & GEO_CITY) {
                m.city = slot->city;
                m.city_len = slot->citylen;
            }
            goto found;
        }
    }
    e->geo_misses++;
    for (i = 0; i < e->ngeo; i++) {
        lproc_geo g;
        int rc = lproc_geoip_find(e->geo[i], ip, n, &g);
        if (rc < 0)
            break;
        if (rc == 0)
            continue;
        if (m.country_code == NULL && g.country_code != NULL) {   /* code and name: one answer */
            m.country_code = g.country_code;
            m.country_code_len = g.country_code_len;
            m.country = g.country;
            m.country_len = g.country_len;
        }
        if (m.city == NULL && g.city != NULL) {
            m.city = g.city;
            m.city_len = g.city_len;
        }
        if (m.country_code != NULL && m.city != NULL)
            break;
    }
    if (slot != NULL) {
        slot->len = 0;
        slot->has = 0;
        if (geo_keep(slot->cc, sizeof slot->cc, &slot->cclen, &slot->has, GEO_CC,
                     m.country_code, m.country_code_len) == 0
            && geo_keep(slot->country, sizeof slot->country, &slot->countrylen, &slot->has,
                        GEO_COUNTRY, m.country, m.country_len) == 0
            && geo_keep(slot->city, sizeof slot->city, &slot->citylen, &slot->has, GEO_CITY,
                        m.city, m.city_len) == 0) {
            memcpy(slot->ip, ip, n);
            slot->len = (unsigned char)n;
        }
    }
found:
    if (m.country_code != NULL)
        set_text(L, e, C_COUNTRY_CODE, m.country_code, m.country_code_len, TX_COPY);
    if (m.country != NULL)
        set_text(L, e, C_COUNTRY, m.country, m.country_len, TX_COPY);
    if (m.city != NULL)
        set_text(L, e, C_CITY, m.city, m.city_len, TX_COPY);
}

/* user_agent -> browser, os, device (first matching rule of each list; device defaults to
 * default_device). The rules see the first UA_MATCH_MAX bytes: a stranger's 64 KiB user agent
 * must not cost a second. Results are cached per engine, keyed by those bytes. */
static void do_ua(lua_State *L, engine *e, const char *p, size_t n, pcre2_match_data *md)
{
    short rule[N_UA];
    ua_entry *slot = NULL;
    int k, i;
    if (n > UA_MATCH_MAX)
        n = UA_MATCH_MAX;
    if (e->uacache_n > 0) {
        slot = &e->uacache[hash_bytes(p, n) & (e->uacache_n - 1)];
        if (slot->key != NULL && slot->keylen == n && memcmp(slot->key, p, n) == 0) {
            e->ua_hits++;
            memcpy(rule, slot->rule, sizeof rule);
            goto found;
        }
    }
    e->ua_misses++;
    for (k = 0; k < N_UA; k++) {
        rule[k] = -1;
        for (i = 0; i < e->nua[k]; i++)
            if (ua_match(e, &e->ua[k][i], p, n, md)) {
                rule[k] = (short)i;
                break;
            }
    }
    if (slot != NULL) {
        char *key = malloc(n ? n : 1);
        if (key != NULL) {
            free(slot->key);
            memcpy(key, p, n);
            slot->key = key;
            slot->keylen = n;
            memcpy(slot->rule, rule, sizeof rule);
        }
    }
found:
    if (rule[UA_BROWSER] >= 0)
        set_text(L, e, C_BROWSER, e->ua[UA_BROWSER][rule[UA_BROWSER]].name,
                 e->ua[UA_BROWSER][rule[UA_BROWSER]].namelen, 0);
    if (rule[UA_OS] >= 0)
        set_text(L, e, C_OS, e->ua[UA_OS][rule[UA_OS]].name, e->ua[UA_OS][rule[UA_OS]].namelen, 0);
    if (rule[UA_DEVICE] >= 0)
        set_text(L, e, C_DEVICE, e->ua[UA_DEVICE][rule[UA_DEVICE]].name,
                 e->ua[UA_DEVICE][rule[UA_DEVICE]].namelen, 0);
    else if (e->default_device != NULL)
        set_text(L, e, C_DEVICE, e->default_device, strlen(e->default_device), 0);
}

/* ---- typed stores (custom columns, the mapping function) ---- */

/* Is p (n bytes) digits at the positions marked 'd' in shape, and equal elsewhere? */
static int has_shape(const char *p, size_t n, const char *shape)
{
    size_t i;
    if (n != strlen(shape))
        return 0;
    for (i = 0; i < n; i++) {
        if (shape[i] == 'd' ? p[i] < '0' || p[i] > '9' : p[i] != shape[i])
            return 0;
    }
    return 1;
}

/* Stores text p (n bytes) into column c, converted to the column's type (TX_COPY: p does not
 * outlive the call). Returns NULL, or what is wrong with the value. */
static const char *store_text(lua_State *L, engine *e, int c, const char *p, size_t n, int flags)
{
    const column *col = &e->cols[c];
    char *s;
    int k;
    switch (col->type) {
    case T_STR:
        set_text(L, e, c, p, n, flags);
        return NULL;
    case T_INT: {
        int64_t v = 0;
        size_t i = n > 0 && p[0] == '-' ? 1 : 0;
        int neg = i;
        if (i == n || n - i > 19)
            return "not an integer or out of range";
        for (; i < n; i++) {
            if (p[i] < '0' || p[i] > '9')
                return "not an integer";
            if (v > (INT64_MAX - (p[i] - '0')) / 10)
                return "out of range";
            v = v * 10 + (p[i] - '0');
        }
        if (neg)
            v = -v;
        if (v < col->imin || v > col->imax)
            return "out of range";
        set_int(e, c, v);
        return NULL;
    }
    case T_DEC:
        s = scratch(L, e, DEC_MAX);
        k = norm_decimal(p, n, col->prec, col->scale, s);
        if (k < 0)
            return "not a decimal or out of range";
        set_dec(e, c, s, (size_t)k);
        return NULL;
    case T_DBL: {
        char tmp[64], *end;
        double d;
        if (n == 0 || n >= sizeof tmp)
            return "not a number";
        memcpy(tmp, p, n);
        tmp[n] = '\0';
        d = strtod(tmp, &end);
        if (*end != '\0' || d != d || d - d != 0)
            return "not a finite number";
        e->vals[c].kind = V_DBL;
        e->vals[c].d = d;
        return NULL;
    }
    case T_BOOL:
        if ((n == 4 && memcmp(p, "true", 4) == 0) || (n == 1 && p[0] == '1'))
            k = 1;
        else if ((n == 5 && memcmp(p, "false", 5) == 0) || (n == 1 && p[0] == '0'))
            k = 0;
        else
            return "not a boolean";
        e->vals[c].kind = V_BOOL;
        e->vals[c].i = k;
        return NULL;
    default: {
        const char *t = col->type == T_DATE ? NULL : col->type == T_TIME ? p : p + 11;
        int y, mo, d;
        if (!has_shape(p, n, col->type == T_DATETIME ? "dddd-dd-dd dd:dd:dd"
                                : col->type == T_DATE ? "dddd-dd-dd" : "dd:dd:dd"))
            return col->type == T_DATETIME ? "not a 'YYYY-MM-DD HH:MM:SS' text"
                   : col->type == T_DATE ? "not a 'YYYY-MM-DD' text" : "not a 'HH:MM:SS' text";
        if (col->type != T_TIME) {
            y = dig4(p);
            mo = dig2(p + 5);
            d = dig2(p + 8);
            if (y < 1000 || mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo))
                return "impossible date";
        }
        if (t != NULL && (dig2(t) > 23 || dig2(t + 3) > 59 || dig2(t + 6) > 59))
            return "impossible time";
        s = scratch(L, e, n);
        memcpy(s, p, n);
        set_raw(e, c, s, n);
        return NULL;
    }
    }
}

/* ---- one line ---- */

/* The text of role r in the current match: 1 with *p, *n set, or 0 when the format has none. */
static int grp(engine *e, int role, const char **p, size_t *n)
{
    int g = e->formats[e->fmt].role_group[role];
    if (g == 0 || e->ov[2 * g] == PCRE2_UNSET)
        return 0;
    *p = e->line + e->ov[2 * g];
    *n = e->ov[2 * g + 1] - e->ov[2 * g];
    return 1;
}

/* The text of variable v (engine-wide id) in the current match, like grp. */
static int var_text(engine *e, int v, const char **p, size_t *n)
{
    int g = e->vargroup[e->fmt * e->nvarnames + v];
    if (g == 0 || e->ov[2 * g] == PCRE2_UNSET)
        return 0;
    *p = e->line + e->ov[2 * g];
    *n = e->ov[2 * g + 1] - e->ov[2 * g];
    return 1;
}

enum { UV_NAMES = 1, UV_RECORD, UV_MAP, UV_GEO, N_UV };

/* Calls the mapping function with the record. Returns 1 (row) or 0 (reject: the function
 * raised, or returned false / nil plus a reason). The stack is left as found. */
static int call_map(lua_State *L, engine *e, int eidx)
{
    int top = lua_gettop(L), rc;
    lua_getiuservalue(L, eidx, UV_MAP);
    lua_getiuservalue(L, eidx, UV_RECORD);
    e->in_map = 1;
    rc = lua_pcall(L, 1, 2, 0);
    e->in_map = 0;
    if (rc != LUA_OK) {
        size_t n;
        const char *msg;
        if (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER) {
            msg = lua_tolstring(L, -1, &n);
        } else {
            msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, -1));
            n = strlen(msg);
        }
        e->n_map_errors++;
        e->reason.len = 0;
        if (buf_adds(&e->reason, "map error: ") < 0 || buf_add(&e->reason, msg, n) < 0)
            oom(L);
        lua_settop(L, top);
        return 0;
    }
    if (!lua_toboolean(L, -2) && (lua_type(L, -2) == LUA_TBOOLEAN || lua_type(L, -1) == LUA_TSTRING)) {
        size_t n = 0;
        const char *why = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : NULL;
        e->reason.len = 0;
        if (why == NULL) {
            why = "rejected by map";
            n = strlen(why);
        }
        if (buf_add(&e->reason, why, n) < 0)
            oom(L);
        lua_settop(L, top);
        return 0;
    }
    lua_settop(L, top);
    return 1;
}

/* Runs the rules on one line (id: the row id). Returns 1 for a row (values in e->vals) or 0
 * for a reject (reason in e->reason, not yet cleaned). eidx: the engine's stack index. */
static int run_line(lua_State *L, engine *e, int eidx, const char *line, size_t len,
                    const char *id, size_t idlen)
{
    const char *p;
    size_t n;
    int i, f, rc, err = 0;

    arena_reset(&e->arena);
    e->n_lines++;
    for (i = 0; i < e->ncols; i++)
        e->vals[i].kind = V_NULL;
    e->vals[C_IS_EMAIL].kind = V_BOOL;
    e->vals[C_IS_EMAIL].i = 0;
    e->fmt = -1;
    set_text(L, e, C_ID, id, idlen, 0);
    if (len > e->max_line)
        return reject(e, "line too long (%zu bytes, max %zu)", len, e->max_line);
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
        len--;
    if (len == 0)
        return reject(e, "empty line");
    for (f = 0; f < e->nformats; f++) {
        rc = pcre2_match(e->formats[f].code, (PCRE2_SPTR)line, len, 0, 0, e->md, e->mctx);
        if (rc > 0)
            break;
        if (rc != PCRE2_ERROR_NOMATCH && err == 0)
            err = rc;
    }
    if (f == e->nformats) {
        if (err != 0) {
            char msg[128];
            pcre2_get_error_message(err, (PCRE2_UCHAR *)msg, sizeof msg);
            return reject(e, "no format matches (pcre2: %s)", msg);
        }
        return reject(e, "no format matches");
    }
    e->line = line;
    e->len = len;
    e->fmt = f;
    e->ov = pcre2_get_ovector_pointer(e->md);

    if (grp(e, F_TIME_LOCAL, &p, &n)) {
        if (!time_local(L, e, p, n))
            return 0;
    } else if (grp(e, F_TIME_ISO, &p, &n)) {
        if (!time_iso(L, e, p, n))
            return 0;
    } else if (grp(e, F_MSEC, &p, &n)) {
        if (!time_msec(L, e, p, n))
            return 0;
    }
    if (grp(e, F_BODY_BYTES, &p, &n)) {
        if (!do_size(L, e, p, n, "body_bytes_sent"))
            return 0;
    } else if (grp(e, F_BYTES, &p, &n)) {
        if (!do_size(L, e, p, n, "bytes_sent"))
            return 0;
    }
    if (grp(e, F_REQUEST_TIME, &p, &n) && !do_request_time(L, e, p, n))
        return 0;
    if (grp(e, F_IP, &p, &n) && n > 0 && !is_dash(p, n)) {
        set_text(L, e, C_IP, p, n, 0);
        do_geo(L, e, p, n);
    }
    if (grp(e, F_SESSION, &p, &n) && n > 0 && !is_dash(p, n))
        set_text(L, e, C_SESSION, p, n, 0);
    if (grp(e, F_USER, &p, &n))
        do_user(L, e, p, n);
    if (grp(e, F_REQUEST, &p, &n)) {
        do_request(L, e, p, n);
    } else {
        if (grp(e, F_METHOD, &p, &n) && n > 0 && !is_dash(p, n))
            set_text(L, e, C_METHOD, p, n, 0);
        if (grp(e, F_PROTOCOL, &p, &n) && n > 0 && !is_dash(p, n))
            set_text(L, e, C_PROTOCOL, p, n, 0);
        if (grp(e, F_URI, &p, &n)) {
            set_text(L, e, C_URL, p, n, 0);
            parse_url(L, e, p, n, e->vals[C_METHOD].kind == V_STR && e->vals[C_METHOD].len == 7
                                  && memcmp(e->vals[C_METHOD].s, "CONNECT", 7) == 0);
        }
    }
    if (grp(e, F_STATUS, &p, &n)) {
        int code = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
        const char *t = status_text(code);
        set_int(e, C_STATUS, code);
        if (t != NULL)
            set_raw(e, C_STATUS_VERBOSE, t, strlen(t));
    }
    if (grp(e, F_REFERRER, &p, &n) && n > 0 && !is_dash(p, n))
        set_text(L, e, C_REFERRER, p, n, 0);
    if (grp(e, F_UA, &p, &n) && n > 0 && !is_dash(p, n)) {
        set_text(L, e, C_UA, p, n, 0);
        do_ua(L, e, p, n, e->md_ua);
    }
    if (grp(e, F_HOST, &p, &n) || grp(e, F_SERVER_NAME, &p, &n) || grp(e, F_HTTP_HOST, &p, &n))
        do_vhost(L, e, p, n);

    for (i = N_STD; i < e->ncols; i++) {    /* custom columns named like a variable */
        int v = e->colvar[i - N_STD];
        if (v >= 0 && var_text(e, v, &p, &n) && !is_dash(p, n)) {
            const char *why = store_text(L, e, i, p, n, 0);
            if (why != NULL)
                return reject(e, "column %s: $%s %s", e->cols[i].name, e->varnames[v], why);
        }
    }
    if (e->has_map && !call_map(L, e, eidx))
        return 0;
    return 1;
}

/* ---- output ---- */

/* Appends p (n bytes) as a JSON string: '"' and '\' escaped, control characters (C0, DEL,
 * C1) as \n, \r, \t or \u00XX, invalid UTF-8 (maximal subparts) as U+FFFD. */
static int json_str(buf *b, const char *p, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)p;
    size_t i = 0;
    char *o;
    if (buf_grow(b, 6 * n + 2) < 0)
        return -1;
    o = b->p + b->len;
    *o++ = '"';
    while (i < n) {
        unsigned char c;
        uint32_t cp;
        int k;
        size_t run = plain_prefix(s + i, n - i, 1);
        if (run > 0) {
            memcpy(o, s + i, run);
            o += run;
            i += run;
            if (i == n)
                break;
        }
        c = s[i];
        if (c >= 0x20 && c < 0x7f) {
            if (c == '"' || c == '\\')
                *o++ = '\\';
            *o++ = (char)c;
            i++;
            continue;
        }
        k = utf8_next(s + i, n - i, &cp);
        if (k < 0) {
            memcpy(o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += (size_t)-k;
        } else if (is_control(cp)) {
            *o++ = '\\';
            if (cp == '\n')
                *o++ = 'n';
            else if (cp == '\r')
                *o++ = 'r';
            else if (cp == '\t')
                *o++ = 't';
            else {
                memcpy(o, "u00", 3);
                o[3] = hex[cp >> 4];
                o[4] = hex[cp & 15];
                o += 5;
            }
            i += (size_t)k;
        } else {
            memcpy(o, s + i, (size_t)k);
            o += k;
            i += (size_t)k;
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->p);
    return 0;
}

/* Appends the shortest %.15g..%.17g text of d that reads back as d. */
static int json_double(buf *b, double d)
{
    char tmp[40];
    int prec;
    for (prec = 15; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*g", prec, d);
        if (strtod(tmp, NULL) == d)
            break;
    }
    return buf_adds(b, tmp);
}

static int json_int(buf *b, int64_t v)
{
    char tmp[20];
    return buf_add(b, tmp, lproc_fmt_int(tmp, (long long)v));
}

/* Cleans the reject reason in place: valid UTF-8, no control characters, at most REASON_MAX
 * characters. */
static void clean_reason(lua_State *L, engine *e)
{
    const unsigned char *s = (const unsigned char *)e->reason.p;
    size_t i, n = e->reason.len, chars = 0, o = 0;
    char *out;
    for (i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] >= 0x7f)
            break;
    if (i == n && n <= REASON_MAX)
        return;
    out = scratch(L, e, 3 * n);
    i = 0;
    while (i < n && chars < REASON_MAX) {
        uint32_t cp;
        int k = utf8_next(s + i, n - i, &cp);
        if (k > 0 && !is_control(cp)) {
            memcpy(out + o, s + i, (size_t)k);
            o += (size_t)k;
            i += (size_t)k;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += (size_t)(k > 0 ? k : -k);
        }
        chars++;
    }
    e->reason.len = 0;
    if (buf_add(&e->reason, out, o) < 0)
        oom(L);
}

/* Builds the JSON object of the current result in e->out. */
static void build_json(lua_State *L, engine *e, int row, const char *line, size_t len,
                       const char *id, size_t idlen)
{
    buf *b = &e->out;
    int i, rc = 0;
    b->len = 0;
    if (!row) {
        rc |= buf_adds(b, "{\"_table\":\"clean_log_reject\",\"id\":");
        rc |= json_str(b, id, idlen);
        rc |= buf_adds(b, ",\"reason\":");
        rc |= json_str(b, e->reason.p, e->reason.len);
        rc |= buf_adds(b, ",\"line\":");
        rc |= json_str(b, line, len);
        rc |= buf_adds(b, "}");
        if (rc != 0)
            oom(L);
        return;
    }
    /* Room for the longest text of every value at once, so that keys, nulls and plain strings
     * are copied without a check (the other appends check, and never need to grow). */
    {
        size_t need = 32;
        for (i = 0; i < e->ncols; i++) {
            const value *v = &e->vals[i];
            need += e->cols[i].keylen;
            switch (v->kind) {
            case V_STR:
                need += v->plain ? v->len + 2 : 6 * v->len + 2;
                break;
            case V_DEC:
                need += v->len;
                break;
            default:                            /* null, true, false, integers, doubles */
                need += 32;
            }
        }
        if (buf_grow(b, need) < 0)
            oom(L);
    }
    rc |= buf_adds(b, "{\"_table\":\"clean_log\"");
    for (i = 0; i < e->ncols && rc == 0; i++) {
        const value *v = &e->vals[i];
        memcpy(b->p + b->len, e->cols[i].key, e->cols[i].keylen);
        b->len += e->cols[i].keylen;
        switch (v->kind) {
        case V_NULL:
            memcpy(b->p + b->len, "null", 4);
            b->len += 4;
            break;
        case V_STR:
            if (v->plain) {
                b->p[b->len] = '"';
                memcpy(b->p + b->len + 1, v->s, v->len);
                b->p[b->len + 1 + v->len] = '"';
                b->len += v->len + 2;
            } else {
                rc |= json_str(b, v->s, v->len);
            }
            break;
        case V_INT:
            rc |= json_int(b, v->i);
            break;
        case V_BOOL:
            rc |= v->i ? buf_add(b, "true", 4) : buf_add(b, "false", 5);
            break;
        case V_DEC:
            rc |= buf_add(b, v->s, v->len);
            break;
        case V_DBL:
            rc |= json_double(b, v->d);
            break;
        }
    }
    rc |= buf_adds(b, "}");
    if (rc != 0)
        oom(L);
}

/* Pushes the value of column c (DECIMAL as text when dec_text, else as a number). */
static void push_value(lua_State *L, const value *v, int dec_text)
{
    switch (v->kind) {
    case V_NULL:
        lua_pushnil(L);
        break;
    case V_STR:
        lua_pushlstring(L, v->s, v->len);
        break;
    case V_INT:
        lua_pushinteger(L, v->i);
        break;
    case V_BOOL:
        lua_pushboolean(L, (int)v->i);
        break;
    case V_DEC:
        if (dec_text) {
            lua_pushlstring(L, v->s, v->len);
        } else {
            char tmp[DEC_MAX + 1];
            memcpy(tmp, v->s, v->len);
            tmp[v->len] = '\0';
            lua_pushnumber(L, strtod(tmp, NULL));
        }
        break;
    case V_DBL:
        lua_pushnumber(L, v->d);
        break;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Lua: engine                                                                                */
/* ------------------------------------------------------------------------------------------ */

/* Frees everything the engine owns; leaves it closed (safe twice, and on a partial engine). */
static void engine_free(engine *e)
{
    int i, k;
    size_t j;
    e->closed = 1;
    for (i = 0; i < e->nformats; i++)
        format_free(&e->formats[i]);
    free(e->formats);
    e->formats = NULL;
    e->nformats = 0;
    free(e->varnames);
    e->varnames = NULL;
    free(e->vargroup);
    e->vargroup = NULL;
    free(e->colvar);
    e->colvar = NULL;
    if (e->md != NULL)
        pcre2_match_data_free(e->md);
    if (e->md_ua != NULL)
        pcre2_match_data_free(e->md_ua);
    if (e->mctx != NULL)
        pcre2_match_context_free(e->mctx);
    if (e->jit != NULL)
        pcre2_jit_stack_free(e->jit);
    e->md = e->md_ua = NULL;
    e->mctx = NULL;
    e->jit = NULL;
    for (i = 0; i < e->ncols; i++)
        column_free(&e->cols[i]);
    free(e->cols);
    free(e->vals);
    e->cols = NULL;
    e->vals = NULL;
    e->ncols = 0;
    for (k = 0; k < N_UA; k++) {
        for (i = 0; i < e->nua[k]; i++) {
            if (e->ua[k][i].code != NULL)
                pcre2_code_free(e->ua[k][i].code);
            free(e->ua[k][i].lit);
            free(e->ua[k][i].name);
        }
        free(e->ua[k]);
        e->ua[k] = NULL;
        e->nua[k] = 0;
    }
    free(e->default_device);
    e->default_device = NULL;
    for (j = 0; j < e->uacache_n; j++)
        free(e->uacache[j].key);
    free(e->uacache);
    e->uacache = NULL;
    e->uacache_n = 0;
    free(e->geocache);
    e->geocache = NULL;
    e->geocache_n = 0;
    arena_free(&e->arena);
    free(e->out.p);
    free(e->reason.p);
    memset(&e->out, 0, sizeof e->out);
    memset(&e->reason, 0, sizeof e->reason);
    e->ngeo = 0;
}

/* The open engine at idx; raises "logfmt.<fname>: engine is closed" otherwise. */
static engine *check_engine(lua_State *L, int idx, const char *fname)
{
    engine *e = luaL_checkudata(L, idx, ENGINE_MT);
    if (e->closed)
        luaL_error(L, "logfmt.%s: engine is closed", fname);
    return e;
}

/* Runs one line for process/json with the engine at eidx and (line, id) at args a, a + 1. */
static int do_process(lua_State *L, int eidx, int a, int json)
{
    engine *e = check_engine(L, eidx, json ? "json" : "process");
    size_t len, idlen;
    const char *line = luaL_checklstring(L, a, &len);
    const char *id = luaL_checklstring(L, a + 1, &idlen);
    int row;
    if (e->in_map)
        return luaL_error(L, "logfmt.%s: called from the mapping function",
                          json ? "json" : "process");
    row = run_line(L, e, eidx, line, len, id, idlen);
    if (row) {
        e->n_rows++;
    } else {
        e->n_rejects++;
        clean_reason(L, e);
    }
    if (json) {
        build_json(L, e, row, line, len, id, idlen);
        if (lua_isnoneornil(L, a + 2)) {
            lua_pushlstring(L, e->out.p, e->out.len);
            return 1;
        }
        /* Straight to the file, with its newline: no Lua string per line. */
        {
            luaL_Stream *out = luaL_checkudata(L, a + 2, LUA_FILEHANDLE);
            if (out->closef == NULL)
                return luaL_error(L, "logfmt.json: the file is closed");
            if (buf_add(&e->out, "\n", 1) != 0)
                return luaL_error(L, "logfmt.json: not enough memory");
            return luaL_fileresult(L, fwrite(e->out.p, 1, e->out.len, out->f) == e->out.len,
                                   NULL);
        }
    }
    if (!row) {
        lua_pushboolean(L, 0);
        lua_pushlstring(L, e->reason.p, e->reason.len);
        return 2;
    }
    {
        int i;
        luaL_checkstack(L, e->ncols + 1, "logfmt.process: too many columns");
        lua_pushboolean(L, 1);
        for (i = 0; i < e->ncols; i++)
            push_value(L, &e->vals[i], 1);
        return e->ncols + 1;
    }
}

/* engine:process(line, id) -> true, v1, ..., vN | false, reason
 * Values in column order; nil is NULL; DECIMAL columns as decimal text. */
static int e_process(lua_State *L)
{
    return do_process(L, 1, 2, 0);
}

/* engine:json(line, id) -> '{"_table":"clean_log",...}' | '{"_table":"clean_log_reject",...}'
 * engine:json(line, id, file) writes that object and a newline to the Lua file instead
 *   -> true | nil, err, errno */
static int e_json(lua_State *L)
{
    return do_process(L, 1, 2, 1);
}

/* The bound forms: (self, line, id) with the engine as upvalue 1. */
static int bound_process(lua_State *L)
{
    return do_process(L, lua_upvalueindex(1), 2, 0);
}

static int bound_json(lua_State *L)
{
    return do_process(L, lua_upvalueindex(1), 2, 1);
}

/* engine:bind("process" | "json") -> function(self, line, id) calling the engine directly, so
 * that a wrapper object can offer obj:process(line, id) without a Lua call in between. */
static int e_bind(lua_State *L)
{
    static const char *const names[] = {"process", "json", NULL};
    int which;
    check_engine(L, 1, "bind");
    which = luaL_checkoption(L, 2, NULL, names);
    lua_pushvalue(L, 1);
    lua_pushcclosure(L, which == 0 ? bound_process : bound_json, 1);
    return 1;
}

/* engine:parse_url(target [, connect]) -> schema, host, port, path, query, rest_session
 * The split of a request target exactly as a line's $request gets it (connect: the method is
 * CONNECT, so an authority-form target is host:port); values cleaned and cut like the columns,
 * nil for NULL. For tests and tools; not callable from the mapping function. */
static int e_parse_url(lua_State *L)
{
    static const int cols[] = {C_SCHEMA, C_HOST, C_PORT, C_PATH, C_QUERY, C_REST_SESSION};
    engine *e = check_engine(L, 1, "parse_url");
    size_t n, i;
    const char *u = luaL_checklstring(L, 2, &n);
    int connect = lua_toboolean(L, 3);
    if (e->in_map)
        return luaL_error(L, "logfmt.parse_url: called from the mapping function");
    arena_reset(&e->arena);
    for (i = 0; i < sizeof cols / sizeof cols[0]; i++)
        e->vals[cols[i]].kind = V_NULL;
    parse_url(L, e, u, n, connect);
    for (i = 0; i < sizeof cols / sizeof cols[0]; i++)
        push_value(L, &e->vals[cols[i]], 1);
    return (int)(sizeof cols / sizeof cols[0]);
}

/* engine:columns() -> {{name=, type=, null=, custom=}...}: all columns in order */
static int e_columns(lua_State *L)
{
    engine *e = check_engine(L, 1, "columns");
    int i;
    lua_createtable(L, e->ncols, 0);
    for (i = 0; i < e->ncols; i++) {
        push_column(L, e->cols[i].name, e->cols[i].sqltype, e->cols[i].nullable);
        lua_pushboolean(L, i >= N_STD);
        lua_setfield(L, -2, "custom");
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

/* engine:stats() -> {lines=, rows=, rejects=, map_errors=, ua_cache_hits=, ua_cache_misses=,
 *                    geo_cache_hits=, geo_cache_misses=} */
static int e_stats(lua_State *L)
{
    engine *e = check_engine(L, 1, "stats");
    lua_createtable(L, 0, 8);
    lua_pushinteger(L, (lua_Integer)e->n_lines);
    lua_setfield(L, -2, "lines");
    lua_pushinteger(L, (lua_Integer)e->n_rows);
    lua_setfield(L, -2, "rows");
    lua_pushinteger(L, (lua_Integer)e->n_rejects);
    lua_setfield(L, -2, "rejects");
    lua_pushinteger(L, (lua_Integer)e->n_map_errors);
    lua_setfield(L, -2, "map_errors");
    lua_pushinteger(L, (lua_Integer)e->ua_hits);
    lua_setfield(L, -2, "ua_cache_hits");
    lua_pushinteger(L, (lua_Integer)e->ua_misses);
    lua_setfield(L, -2, "ua_cache_misses");
    lua_pushinteger(L, (lua_Integer)e->geo_hits);
    lua_setfield(L, -2, "geo_cache_hits");
    lua_pushinteger(L, (lua_Integer)e->geo_misses);
    lua_setfield(L, -2, "geo_cache_misses");
    return 1;
}

/* engine:close()  (safe twice; also __gc and __close) */
static int e_close(lua_State *L)
{
    engine *e = luaL_checkudata(L, 1, ENGINE_MT);
    if (e->in_map)
        return luaL_error(L, "logfmt.close: called from the mapping function");
    engine_free(e);
    return 0;
}

static int e_tostring(lua_State *L)
{
    engine *e = luaL_checkudata(L, 1, ENGINE_MT);
    if (e->closed)
        lua_pushliteral(L, "logfmt.engine (closed)");
    else
        lua_pushfstring(L, "logfmt.engine (%d formats, %d columns)", e->nformats, e->ncols);
    return 1;
}

/* ---- the record handed to the mapping function ---- */

#define CODE_FORMAT 0x7fff0001
#define CODE_LINE 0x7fff0002

typedef struct record {
    engine *e;
} record;

/* The engine of the record at 1, checking that the mapping function is running; pushes the
 * code of key 2 (column i: i + 1, variable v: -(v + 1)) and returns it, or raises. */
static engine *record_key(lua_State *L, const char *op, lua_Integer *code)
{
    record *r = luaL_checkudata(L, 1, RECORD_MT);
    engine *e = r->e;
    if (e->closed || !e->in_map)
        luaL_error(L, "rec: used outside the mapping function");
    lua_getiuservalue(L, 1, 1);
    lua_pushvalue(L, 2);
    if (lua_rawget(L, -2) != LUA_TNUMBER) {
        if (lua_type(L, 2) == LUA_TSTRING)
            luaL_error(L, "rec.%s: no such column or variable", lua_tostring(L, 2));
        luaL_error(L, "rec: %s with a %s key", op, luaL_typename(L, 2));
    }
    *code = lua_tointeger(L, -1);
    lua_pop(L, 2);
    return e;
}

/* rec[name] -> the column's current value, or the variable's text (nil when absent or '-') */
static int r_index(lua_State *L)
{
    lua_Integer code;
    engine *e = record_key(L, "read", &code);
    if (code > 0 && code <= e->ncols) {
        push_value(L, &e->vals[code - 1], 0);
    } else if (code < 0) {
        const char *p;
        size_t n;
        if (var_text(e, (int)(-code - 1), &p, &n) && !is_dash(p, n))
            lua_pushlstring(L, p, n);
        else
            lua_pushnil(L);
    } else if (code == CODE_FORMAT) {
        lua_pushstring(L, e->formats[e->fmt].name);
    } else {
        lua_pushlstring(L, e->line, e->len);
    }
    return 1;
}

/* rec[column] = value: converted to the column's type; raises (with the caller's position)
 * on a type or range error. */
static int r_newindex(lua_State *L)
{
    lua_Integer code;
    engine *e = record_key(L, "write", &code);
    const column *col;
    const char *why = NULL;
    int c, t = lua_type(L, 3);
    if (code <= 0 || code > e->ncols)
        return luaL_error(L, "rec.%s: not a column (declare it with R:column)",
                          lua_tostring(L, 2));
    c = (int)code - 1;
    col = &e->cols[c];
    if (c == C_ID)
        return luaL_error(L, "rec.id: read-only");
    if (t == LUA_TNIL) {
        if (!col->nullable)
            return luaL_error(L, "rec.%s: cannot be nil", col->name);
        e->vals[c].kind = V_NULL;
        return 0;
    }
    switch (col->type) {
    case T_BOOL:
        if (t != LUA_TBOOLEAN)
            why = "expected a boolean";
        else {
            e->vals[c].kind = V_BOOL;
            e->vals[c].i = lua_toboolean(L, 3);
        }
        break;
    case T_INT:
        if (t == LUA_TNUMBER) {
            int isint;
            lua_Integer v = lua_tointegerx(L, 3, &isint);
            if (!isint)
                why = "expected an integer";
            else if (v < col->imin || v > col->imax)
                why = "out of range";
            else
                set_int(e, c, v);
            break;
        }
        /* fall through */
    case T_STR:
    case T_DATETIME:
    case T_DATE:
    case T_TIME:
    case T_DBL:
    case T_DEC:
        if (col->type == T_DBL && t == LUA_TNUMBER) {
            double d = lua_tonumber(L, 3);
            if (d != d || d - d != 0)
                why = "not a finite number";
            else {
                e->vals[c].kind = V_DBL;
                e->vals[c].d = d;
            }
        } else if (col->type == T_DEC && t == LUA_TNUMBER && !lua_isinteger(L, 3)) {
            char tmp[400];
            double d = lua_tonumber(L, 3);
            if (d != d || d - d != 0 || snprintf(tmp, sizeof tmp, "%.*f", col->scale, d)
                                         >= (int)sizeof tmp)
                why = "not a decimal or out of range";
            else
                why = store_text(L, e, c, tmp, strlen(tmp), TX_COPY);
        } else if (t == LUA_TSTRING || t == LUA_TNUMBER) {
            size_t n;
            const char *s;
            lua_pushvalue(L, 3);
            s = lua_tolstring(L, -1, &n);
            why = store_text(L, e, c, s, n, TX_COPY);
            lua_pop(L, 1);
        } else {
            why = "expected a string or a number";
        }
        break;
    }
    if (why != NULL)
        return luaL_error(L, "rec.%s: %s (%s %s)", col->name, why, col->sqltype,
                          luaL_typename(L, 3));
    return 0;
}

static int r_tostring(lua_State *L)
{
    luaL_checkudata(L, 1, RECORD_MT);
    lua_pushliteral(L, "logfmt.record");
    return 1;
}

/* ---- construction ---- */

/* Reads opts.<field> as an integer in lo..hi (def when nil); raises otherwise. */
static lua_Integer opt_int(lua_State *L, const char *field, lua_Integer def, lua_Integer lo,
                           lua_Integer hi)
{
    lua_Integer v;
    int isint;
    if (lua_getfield(L, 1, field) == LUA_TNIL) {
        lua_pop(L, 1);
        return def;
    }
    v = lua_tointegerx(L, -1, &isint);
    if (!isint || v < lo || v > hi)
        luaL_error(L, "logfmt.engine: %s must be an integer from %d to %d", field, (int)lo,
                   (int)hi);
    lua_pop(L, 1);
    return v;
}

/* Reads field (or index k) of the table at -1 as a string; NULL when absent. */
static const char *entry_string(lua_State *L, int k, const char *field, size_t *len)
{
    const char *s;
    if (lua_rawgeti(L, -1, k) == LUA_TNIL) {
        lua_pop(L, 1);
        lua_getfield(L, -1, field);
    }
    s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, len) : NULL;
    lua_pop(L, 1);   /* still referenced by the entry table */
    return s;
}

/* Compiles the formats of opts.formats ({{name=, format=}...}) and the variable tables. */
static void build_formats(lua_State *L, engine *e)
{
    int i, n = 0, j, v;
    char err[300];
    if (lua_getfield(L, 1, "formats") == LUA_TTABLE)
        n = (int)lua_rawlen(L, -1);
    if (n == 0)
        luaL_error(L, "logfmt.engine: formats must be a non-empty array of {name=, format=}");
    e->formats = calloc((size_t)n, sizeof *e->formats);
    e->varnames = calloc((size_t)n * MAX_VARS, sizeof *e->varnames);
    if (e->formats == NULL || e->varnames == NULL)
        oom(L);
    for (i = 0; i < n; i++) {
        size_t len, nlen;
        const char *name, *src;
        if (lua_rawgeti(L, -1, i + 1) != LUA_TTABLE)
            luaL_error(L, "logfmt.engine: formats[%d] must be a table {name=, format=}", i + 1);
        lua_getfield(L, -1, "name");
        lua_getfield(L, -2, "format");
        name = lua_tolstring(L, -2, &nlen);
        src = lua_tolstring(L, -1, &len);
        if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "logfmt.engine: formats[%d] must have string name and format", i + 1);
        if (format_compile(&e->formats[i], src, len, err, sizeof err) < 0)
            luaL_error(L, "logfmt.engine: format '%s': %s", name, err);
        e->nformats++;
        if ((e->formats[i].name = strdup(name)) == NULL)
            oom(L);
        lua_pop(L, 3);
    }
    lua_pop(L, 1);
    for (i = 0; i < n; i++)                 /* distinct variable names */
        for (j = 0; j < e->formats[i].nvars; j++) {
            for (v = 0; v < e->nvarnames; v++)
                if (strcmp(e->varnames[v], e->formats[i].names[j]) == 0)
                    break;
            if (v == e->nvarnames)
                e->varnames[e->nvarnames++] = e->formats[i].names[j];
        }
    e->vargroup = calloc((size_t)n * (size_t)(e->nvarnames ? e->nvarnames : 1), 1);
    if (e->vargroup == NULL)
        oom(L);
    for (i = 0; i < n; i++)
        for (j = 0; j < e->formats[i].nvars; j++)
            for (v = 0; v < e->nvarnames; v++)
                if (strcmp(e->varnames[v], e->formats[i].names[j]) == 0) {
                    if (e->vargroup[i * e->nvarnames + v] == 0)
                        e->vargroup[i * e->nvarnames + v] = (unsigned char)(j + 1);
                    break;
                }
}

/* Is s a column name we accept: [a-z][a-z0-9_]*, at most 64 bytes? */
static int good_column_name(const char *s, size_t n)
{
    size_t i;
    if (n == 0 || n > 64 || !(s[0] >= 'a' && s[0] <= 'z'))
        return 0;
    for (i = 1; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return 0;
    return 1;
}

/* The standard columns plus opts.columns ({{name=, type=}...}), and the names table. */
static void build_columns(lua_State *L, engine *e, int eidx)
{
    int i, v, ncustom = 0;
    char err[200];
    if (lua_getfield(L, 1, "columns") != LUA_TNIL) {
        luaL_checktype(L, -1, LUA_TTABLE);
        ncustom = (int)lua_rawlen(L, -1);
    }
    e->cols = calloc((size_t)(N_STD + ncustom), sizeof *e->cols);
    e->vals = calloc((size_t)(N_STD + ncustom), sizeof *e->vals);
    e->colvar = calloc((size_t)(ncustom ? ncustom : 1), sizeof *e->colvar);
    if (e->cols == NULL || e->vals == NULL || e->colvar == NULL)
        oom(L);
    for (i = 0; i < N_STD; i++) {
        if (column_init(&e->cols[i], std_columns[i].name, std_columns[i].type,
                        std_columns[i].nullable, err, sizeof err) < 0)
            luaL_error(L, "logfmt.engine: column '%s': %s", std_columns[i].name, err);
        e->ncols++;
    }
    for (i = 0; i < ncustom; i++) {
        size_t nlen, tlen;
        const char *name, *type;
        int k;
        if (lua_rawgeti(L, -1, i + 1) != LUA_TTABLE)
            luaL_error(L, "logfmt.engine: columns[%d] must be a table {name=, type=}", i + 1);
        lua_getfield(L, -1, "name");
        lua_getfield(L, -2, "type");
        name = lua_tolstring(L, -2, &nlen);
        type = lua_tolstring(L, -1, &tlen);
        if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "logfmt.engine: columns[%d] must have string name and type", i + 1);
        if (!good_column_name(name, nlen))
            luaL_error(L, "logfmt.engine: column '%s': bad name (want [a-z][a-z0-9_]*, "
                       "at most 64 bytes)", name);
        for (k = 0; k < e->ncols; k++)
            if (strcmp(e->cols[k].name, name) == 0)
                luaL_error(L, "logfmt.engine: column '%s': defined twice", name);
        if (column_init(&e->cols[N_STD + i], name, type, 1, err, sizeof err) < 0)
            luaL_error(L, "logfmt.engine: column '%s': %s", name, err);
        e->ncols++;
        e->colvar[i] = -1;
        for (v = 0; v < e->nvarnames; v++)
            if (strcmp(e->varnames[v], name) == 0)
                e->colvar[i] = v;
        lua_pop(L, 3);
    }
    lua_pop(L, 1);

    lua_createtable(L, 0, e->ncols + e->nvarnames + 2);
    for (v = 0; v < e->nvarnames; v++) {
        lua_pushinteger(L, -(v + 1));
        lua_setfield(L, -2, e->varnames[v]);
    }
    for (i = 0; i < e->ncols; i++) {       /* columns win over variables of the same name */
        lua_pushinteger(L, i + 1);
        lua_setfield(L, -2, e->cols[i].name);
    }
    lua_pushinteger(L, CODE_FORMAT);
    lua_setfield(L, -2, "_format");
    lua_pushinteger(L, CODE_LINE);
    lua_setfield(L, -2, "_line");
    {
        record *r = lua_newuserdatauv(L, sizeof *r, 2);
        r->e = e;
        luaL_setmetatable(L, RECORD_MT);
        lua_pushvalue(L, -2);
        lua_setiuservalue(L, -2, 1);
        lua_pushvalue(L, eidx);
        lua_setiuservalue(L, -2, 2);
        lua_setiuservalue(L, eidx, UV_RECORD);
    }
    lua_setiuservalue(L, eidx, UV_NAMES);
}

/* The user-agent rules of opts.ua = {browser = {{pattern, name}...}, os = ..., device = ...,
 * default_device = "desktop"}. A pattern without regex metacharacters is a plain substring. */
static void build_ua(lua_State *L, engine *e)
{
    int k, i, n;
    if (lua_getfield(L, 1, "ua") == LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    luaL_checktype(L, -1, LUA_TTABLE);
    for (k = 0; k < N_UA; k++) {
        if (lua_getfield(L, -1, ua_kinds[k]) == LUA_TNIL) {
            lua_pop(L, 1);
            continue;
        }
        if (!lua_istable(L, -1))
            luaL_error(L, "logfmt.engine: ua.%s must be an array of {pattern, name}", ua_kinds[k]);
        n = (int)lua_rawlen(L, -1);
        if (n > 32767)
            luaL_error(L, "logfmt.engine: ua.%s: too many rules", ua_kinds[k]);
        e->ua[k] = calloc((size_t)(n ? n : 1), sizeof **e->ua);
        if (e->ua[k] == NULL)
            oom(L);
        for (i = 0; i < n; i++) {
            ua_rule *r = &e->ua[k][i];
            size_t plen, nlen;
            const char *pat, *name;
            if (lua_rawgeti(L, -1, i + 1) != LUA_TTABLE)
                luaL_error(L, "logfmt.engine: ua.%s[%d] must be a table {pattern, name}",
                           ua_kinds[k], i + 1);
            pat = entry_string(L, 1, "pattern", &plen);
            name = entry_string(L, 2, "name", &nlen);
            if (pat == NULL || name == NULL)
                luaL_error(L, "logfmt.engine: ua.%s[%d] must be {pattern, name} (strings)",
                           ua_kinds[k], i + 1);
            e->nua[k]++;
            r->name = malloc(nlen + 1);
            if (r->name == NULL)
                oom(L);
            memcpy(r->name, name, nlen + 1);
            r->namelen = nlen;
            if (strcspn(pat, "\\^$.|?*+()[]{}") == plen) {
                r->lit = malloc(plen + 1);
                if (r->lit == NULL)
                    oom(L);
                memcpy(r->lit, pat, plen + 1);
                r->litlen = plen;
            } else {
                int ec;
                PCRE2_SIZE eo;
                r->code = pcre2_compile((PCRE2_SPTR)pat, plen, 0, &ec, &eo, NULL);
                if (r->code == NULL) {
                    char msg[200];
                    pcre2_get_error_message(ec, (PCRE2_UCHAR *)msg, sizeof msg);
                    luaL_error(L, "logfmt.engine: ua.%s[%d]: bad pattern: %s at offset %d",
                               ua_kinds[k], i + 1, msg, (int)eo);
                }
                if (!lproc_nojit())
                    pcre2_jit_compile(r->code, PCRE2_JIT_COMPLETE);
            }
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    if (lua_getfield(L, -1, "default_device") == LUA_TSTRING) {
        if ((e->default_device = strdup(lua_tostring(L, -1))) == NULL)
            oom(L);
    } else if (!lua_isnil(L, -1)) {
        luaL_error(L, "logfmt.engine: ua.default_device must be a string");
    }
    lua_pop(L, 2);
}

/* logfmt.engine(opts) -> engine  (raises "logfmt.engine: why" on bad options)
 * opts: formats = {{name=, format=}...} (tried in order), columns = {{name=, type=}...}
 * (custom columns, after the standard ones), geoip = {db...} (lproc.geoip handles, first
 * answer wins per field), ua = {browser=, os=, device=, default_device=}, map = function(rec),
 * max_line = 65536, ua_cache = 4096, geo_cache = 16384 (entries; 0 disables a cache). */
static int l_engine(lua_State *L)
{
    engine *e;
    int eidx, i, n;
    lua_Integer cache, geocache;
    luaL_checktype(L, 1, LUA_TTABLE);
    e = lua_newuserdatauv(L, sizeof *e, N_UV - 1);
    memset(e, 0, sizeof *e);
    e->closed = 1;
    luaL_setmetatable(L, ENGINE_MT);
    eidx = lua_gettop(L);

    e->max_line = (size_t)opt_int(L, "max_line", DEFAULT_MAX_LINE, 1, MAX_MAX_LINE);
    cache = opt_int(L, "ua_cache", DEFAULT_UA_CACHE, 0, 1 << 20);
    geocache = opt_int(L, "geo_cache", DEFAULT_GEO_CACHE, 0, 1 << 22);
    build_formats(L, e);
    build_columns(L, e, eidx);
    build_ua(L, e);

    lua_getfield(L, 1, "map");
    if (!lua_isnil(L, -1) && !lua_isfunction(L, -1))
        return luaL_error(L, "logfmt.engine: map must be a function");
    e->has_map = lua_isfunction(L, -1);
    lua_setiuservalue(L, eidx, UV_MAP);

    if (lua_getfield(L, 1, "geoip") != LUA_TNIL) {
        luaL_checktype(L, -1, LUA_TTABLE);
        n = (int)lua_rawlen(L, -1);
        if (n > MAX_GEOIP)
            return luaL_error(L, "logfmt.engine: at most %d geoip databases", MAX_GEOIP);
        lua_createtable(L, n, 0);                   /* keeps the databases alive */
        for (i = 0; i < n; i++) {
            lua_rawgeti(L, -2, i + 1);
            e->geo[i] = lproc_geoip_check(L, lua_gettop(L));
            e->ngeo++;
            lua_rawseti(L, -2, i + 1);
        }
        lua_setiuservalue(L, eidx, UV_GEO);
    }
    lua_pop(L, 1);

    if (cache > 0) {
        size_t slots = 1;
        while (slots < (size_t)cache)
            slots *= 2;
        e->uacache = calloc(slots, sizeof *e->uacache);
        if (e->uacache == NULL)
            return oom(L);
        e->uacache_n = slots;
    }
    if (geocache > 0 && e->ngeo > 0) {
        size_t slots = 1;
        while (slots < (size_t)geocache)
            slots *= 2;
        e->geocache = calloc(slots, sizeof *e->geocache);
        if (e->geocache == NULL)
            return oom(L);
        e->geocache_n = slots;
    }
    e->md = pcre2_match_data_create(MAX_VARS + 1, NULL);
    e->md_ua = pcre2_match_data_create(1, NULL);
    e->mctx = pcre2_match_context_create(NULL);
    e->jit = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, NULL);
    if (e->md == NULL || e->md_ua == NULL || e->mctx == NULL || e->jit == NULL)
        return oom(L);
    pcre2_set_match_limit(e->mctx, MATCH_LIMIT);
    pcre2_jit_stack_assign(e->mctx, NULL, e->jit);
    e->closed = 0;
    lua_settop(L, eidx);
    return 1;
}

/* ------------------------------------------------------------------------------------------ */

/* Creates metatable name with methods in __index, close as __gc and __close. */
int luaopen_lproc_logfmt(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"compile", l_compile},
        {"engine", l_engine},
        {"columns", l_columns},
        {NULL, NULL},
    };
    static const luaL_Reg format_methods[] = {
        {"pattern", f_pattern},
        {"variables", f_variables},
        {"match", f_match},
        {"close", f_close},
        {NULL, NULL},
    };
    static const luaL_Reg engine_methods[] = {
        {"process", e_process},
        {"json", e_json},
        {"bind", e_bind},
        {"parse_url", e_parse_url},
        {"columns", e_columns},
        {"stats", e_stats},
        {"close", e_close},
        {NULL, NULL},
    };
    lproc_newclass(L, FORMAT_MT, format_methods, f_close, f_tostring);
    lproc_newclass(L, ENGINE_MT, engine_methods, e_close, e_tostring);
    luaL_newmetatable(L, RECORD_MT);
    lua_pushcfunction(L, r_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, r_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, r_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    luaL_newlib(L, funcs);
    return 1;
}
