/*
 * lua_reader.c - lproc.reader: reads a log file line by line, with byte offsets.
 *
 *   local reader = require "lproc.reader"
 *   local r = assert(reader.open("access.log"))        -- "-" = stdin; .gz read transparently
 *   for line, offset in r:lines() do ... end
 *
 * A line ends at "\n"; a "\r" before it is dropped; every other byte is kept. The offset of a
 * line is the byte offset of its first byte in the (decompressed) stream. A last line without
 * "\n" is a line at end of file, unless the reader follows a growing file: then it is held back
 * until its "\n" arrives (or `r:read(true)` takes it, e.g. when the file was rotated).
 *
 *   for next, offset, line in reader.records(body) do ... end
 *
 * walks the records "OFFSET SP LINE LF" of a batch message's body (the producer's --batch).
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zlib.h>

#include "lproc.h"

#define READER_MT "lproc.reader.file"
#define BLOCK (1 << 20)
#define DEFAULT_MAX_LINE (64u << 20)
#define SKIP_STEP (16u << 20)   /* most bytes of an over-long line one read drops */

typedef struct reader {
    int fd;              /* -1 when closed */
    gzFile gz;           /* non-NULL when the file is gzip-compressed */
    int is_stdin;
    char *buf;           /* bytes [start, end) are read but not yet returned */
    size_t cap, start, end;
    int64_t offset;      /* stream offset of buf[start] */
    size_t max_line;     /* longer lines are returned truncated */
    int eof;             /* the last read returned 0 */
    int skipping;        /* dropping the rest of an over-long line */
    char name[256];      /* for error messages */
} reader;

/* Checks that argument idx is an open reader; raises naming the method otherwise. */
static reader *check_open(lua_State *L, int idx, const char *method)
{
    reader *r = luaL_checkudata(L, idx, READER_MT);
    if (r->fd < 0)
        luaL_error(L, "reader.%s: reader is closed", method);
    return r;
}

/* Releases the file and the buffer. Safe to call twice. */
static void reader_release(reader *r)
{
    if (r->gz != NULL) {
        gzclose(r->gz);           /* closes fd too */
        r->gz = NULL;
    } else if (r->fd >= 0 && !r->is_stdin) {
        close(r->fd);
    }
    r->fd = -1;
    free(r->buf);
    r->buf = NULL;
}

/* Reads more bytes into the buffer. Returns the count, 0 at end of file, -1 on error. */
static ssize_t fill(reader *r)
{
    ssize_t n;
    if (r->start > 0 && (r->start == r->end || r->end == r->cap)) {
        memmove(r->buf, r->buf + r->start, r->end - r->start);
        r->end -= r->start;
        r->start = 0;
    }
    if (r->end == r->cap) {
        size_t ncap = r->cap * 2;
        char *nb = realloc(r->buf, ncap);
        if (nb == NULL) {
            errno = ENOMEM;
            return -1;
        }
        r->buf = nb;
        r->cap = ncap;
    }
    if (r->gz != NULL) {
        int k = gzread(r->gz, r->buf + r->end, (unsigned)(r->cap - r->end));
        if (k < 0) {
            errno = EIO;
            return -1;
        }
        if (k == 0)
            gzclearerr(r->gz);    /* a file being appended to can be read further */
        n = k;
    } else {
        do {
            n = read(r->fd, r->buf + r->end, r->cap - r->end);
        } while (n < 0 && errno == EINTR);
    }
    if (n > 0)
        r->end += (size_t)n;
    r->eof = (n == 0);
    return n;
}

/* reader.open(path [, {max_line=N}]) -> reader | nil, err */
static int l_open(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    reader *r;
    unsigned char magic[2];
    ssize_t n;

    r = lua_newuserdatauv(L, sizeof *r, 0);
    memset(r, 0, sizeof *r);
    r->fd = -1;
    luaL_setmetatable(L, READER_MT);
    r->max_line = DEFAULT_MAX_LINE;
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "max_line");
        if (!lua_isnil(L, -1))
            r->max_line = (size_t)luaL_checkinteger(L, -1);
        lua_pop(L, 1);
    }
    snprintf(r->name, sizeof r->name, "%s", path);

    if (strcmp(path, "-") == 0) {
        r->fd = STDIN_FILENO;
        r->is_stdin = 1;
    } else {
        struct stat st;
        int e = 0;
        r->fd = open(path, O_RDONLY | O_CLOEXEC);
        if (r->fd < 0)
            e = errno;
        else if (fstat(r->fd, &st) == 0 && S_ISDIR(st.st_mode))
            e = EISDIR;   /* open() takes a directory; say so now rather than at the first read */
        if (e != 0) {
            if (r->fd >= 0)
                close(r->fd);
            r->fd = -1;
            luaL_pushfail(L);
            lua_pushfstring(L, "reader.open: %s: %s", path, strerror(e));
            lua_pushinteger(L, e);
            return 3;
        }
    }
    r->cap = BLOCK;
    r->buf = malloc(r->cap);
    if (r->buf == NULL) {
        reader_release(r);
        return luaL_error(L, "reader.open: not enough memory");
    }
    /* gzip? Look at the first two bytes without consuming them (regular files only). */
    if (!r->is_stdin) {
        n = pread(r->fd, magic, 2, 0);
        if (n == 2 && magic[0] == 0x1f && magic[1] == 0x8b) {
            r->gz = gzdopen(r->fd, "rb");
            if (r->gz == NULL) {
                reader_release(r);
                luaL_pushfail(L);
                lua_pushfstring(L, "reader.open: %s: cannot start gzip decoding", path);
                return 2;
            }
            gzbuffer(r->gz, BLOCK);
        }
    }
    return 1;
}

/* Pushes the line at buf[s, s+len), dropping one trailing "\r", and its offset. */
static void push_line(lua_State *L, reader *r, size_t s, size_t len, int64_t off)
{
    if (len > 0 && r->buf[s + len - 1] == '\r')
        len--;
    lua_pushlstring(L, r->buf + s, len);
    lua_pushinteger(L, off);
}

/* r:read([take_partial]) -> line, offset [, true if truncated] | nil (no complete line) | nil, err
 *                          | false (still dropping the rest of an over-long line: call again)
 * At end of file a last line without "\n" is returned only when take_partial is true (the
 * lines() iterator passes true: a finished file's last line counts). The rest of an over-long
 * line is dropped SKIP_STEP bytes per call at most, so that a line that never ends (a device,
 * a file without a newline) leaves the caller free to look at its signals. */
static int l_read(lua_State *L)
{
    reader *r = check_open(L, 1, "read");
    int take_partial = lua_toboolean(L, 2);
    size_t dropped = 0;

    for (;;) {
        char *nl = NULL;
        size_t avail = r->end - r->start;
        if (avail > 0)
            nl = memchr(r->buf + r->start, '\n', avail);
        if (nl != NULL) {
            size_t len = (size_t)(nl - (r->buf + r->start));
            int64_t off = r->offset;
            size_t s = r->start;
            r->start += len + 1;
            r->offset += (int64_t)len + 1;
            if (r->skipping) {           /* the rest of an over-long line: drop it */
                r->skipping = 0;
                continue;
            }
            if (len > r->max_line) {
                push_line(L, r, s, r->max_line, off);
                lua_pushboolean(L, 1);
                return 3;
            }
            push_line(L, r, s, len, off);
            return 2;
        }
        if (avail >= r->max_line && !r->skipping) {
            /* An over-long line: return its first max_line bytes, drop the rest. */
            int64_t off = r->offset;
            push_line(L, r, r->start, r->max_line, off);
            r->start += avail;
            r->offset += (int64_t)avail;
            r->skipping = 1;
            lua_pushboolean(L, 1);
            return 3;
        }
        if (r->skipping && avail > 0) {
            r->offset += (int64_t)avail;
            r->start = r->end;
            dropped += avail;
            if (dropped >= SKIP_STEP) {
                lua_pushboolean(L, 0);
                return 1;
            }
        }
        {
            ssize_t n = fill(r);
            if (n < 0) {
                int e = errno;
                luaL_pushfail(L);
                lua_pushfstring(L, "reader.read: %s: %s", r->name, strerror(e));
                return 2;
            }
            if (n == 0) {
                avail = r->end - r->start;
                if (take_partial && avail > 0 && !r->skipping) {
                    int64_t off = r->offset;
                    size_t s = r->start;
                    r->start = r->end;
                    r->offset += (int64_t)avail;
                    push_line(L, r, s, avail, off);
                    return 2;
                }
                if (take_partial && r->skipping) {
                    r->skipping = 0;
                }
                luaL_pushfail(L);
                return 1;
            }
        }
    }
}

/* Iterator step for r:lines(): raises on a read error. */
static int lines_step(lua_State *L)
{
    int n;
    do {
        lua_settop(L, 1);
        lua_pushboolean(L, 1);
        n = l_read(L);
    } while (n == 1 && lua_isboolean(L, -1) && !lua_toboolean(L, -1));
    if (n == 2 && lua_isnil(L, -2))
        return luaL_error(L, "%s", lua_tostring(L, -1));
    return n;
}

/* r:lines() -> iterator of line, offset (a last line without "\n" included) */
static int l_lines(lua_State *L)
{
    check_open(L, 1, "lines");
    lua_pushcfunction(L, lines_step);
    lua_pushvalue(L, 1);
    return 2;
}

/* r:tell() -> offset of the first byte not yet returned as (part of) a line */
static int l_tell(lua_State *L)
{
    reader *r = check_open(L, 1, "tell");
    lua_pushinteger(L, r->offset);
    return 1;
}

/* r:seek(offset) -> true | nil, err   (plain files only) */
static int l_seek(lua_State *L)
{
    reader *r = check_open(L, 1, "seek");
    lua_Integer off = luaL_checkinteger(L, 2);
    luaL_argcheck(L, off >= 0, 2, "offset must be >= 0");
    if (r->gz != NULL || r->is_stdin)
        return luaL_error(L, "reader.seek: %s is not a plain file", r->name);
    if (lseek(r->fd, (off_t)off, SEEK_SET) < 0) {
        int e = errno;
        luaL_pushfail(L);
        lua_pushfstring(L, "reader.seek: %s: %s", r->name, strerror(e));
        return 2;
    }
    r->start = r->end = 0;
    r->offset = off;
    r->skipping = 0;
    r->eof = 0;
    lua_pushboolean(L, 1);
    return 1;
}

/* r:stat() -> {dev=, ino=, size=} of the open file */
static int l_stat(lua_State *L)
{
    reader *r = check_open(L, 1, "stat");
    struct stat st;
    if (fstat(r->fd, &st) != 0) {
        int e = errno;
        luaL_pushfail(L);
        lua_pushfstring(L, "reader.stat: %s: %s", r->name, strerror(e));
        return 2;
    }
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, (lua_Integer)st.st_dev);
    lua_setfield(L, -2, "dev");
    lua_pushinteger(L, (lua_Integer)st.st_ino);
    lua_setfield(L, -2, "ino");
    lua_pushinteger(L, (lua_Integer)st.st_size);
    lua_setfield(L, -2, "size");
    return 1;
}

/* r:compressed() -> true when the file is gzip-compressed */
static int l_compressed(lua_State *L)
{
    reader *r = check_open(L, 1, "compressed");
    lua_pushboolean(L, r->gz != NULL);
    return 1;
}

/* r:close() -> true; safe to call twice (also __gc and __close) */
static int l_close(lua_State *L)
{
    reader *r = luaL_checkudata(L, 1, READER_MT);
    reader_release(r);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_tostring(lua_State *L)
{
    reader *r = luaL_checkudata(L, 1, READER_MT);
    lua_pushfstring(L, "lproc.reader (%s%s)", r->name, r->fd < 0 ? ", closed" : "");
    return 1;
}

/* The iterator of reader.records: (body, pos) -> next, offset, line, or nothing at the end of
 * body or when the record at pos is not "OFFSET SP LINE" up to LF or the end (OFFSET: 1 to 18
 * decimal digits). pos and next are 1-based positions: next is where the following record
 * starts, so the caller knows where a malformed tail begins. */
static int records_next(lua_State *L)
{
    size_t len, i, start, end;
    const char *s = luaL_checklstring(L, 1, &len), *nl;
    lua_Integer pos = luaL_checkinteger(L, 2);
    long long off = 0;

    if (pos < 1 || (size_t)pos > len)
        return 0;
    i = start = (size_t)pos - 1;
    while (i < len && i - start < 18 && s[i] >= '0' && s[i] <= '9')
        off = off * 10 + (s[i++] - '0');
    if (i == start || i >= len || s[i] != ' ')
        return 0;
    i++;
    nl = memchr(s + i, '\n', len - i);
    end = nl != NULL ? (size_t)(nl - s) : len;
    lua_pushinteger(L, (lua_Integer)(nl != NULL ? end + 1 : end) + 1);
    lua_pushinteger(L, (lua_Integer)off);
    lua_pushlstring(L, s + i, end - i);
    return 3;
}

/* reader.records(body) -> iterator, body, 1 (for a generic for; see records_next) */
static int l_records(lua_State *L)
{
    luaL_checkstring(L, 1);
    lua_pushcfunction(L, records_next);
    lua_pushvalue(L, 1);
    lua_pushinteger(L, 1);
    return 3;
}

static const luaL_Reg methods[] = {
    {"read", l_read},
    {"lines", l_lines},
    {"tell", l_tell},
    {"seek", l_seek},
    {"stat", l_stat},
    {"compressed", l_compressed},
    {"close", l_close},
    {NULL, NULL},
};

int luaopen_lproc_reader(lua_State *L)
{
    static const luaL_Reg funcs[] = {{"open", l_open}, {"records", l_records}, {NULL, NULL}};
    lproc_newclass(L, READER_MT, methods, l_close, l_tostring);
    luaL_newlib(L, funcs);
    return 1;
}
