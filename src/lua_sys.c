/*
 * lua_sys.c - lproc.sys: the few operating-system services the scripts need that Lua lacks:
 * clocks, sleeping, signals as polled flags, file identity, atomic file replacement.
 */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* realpath */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lproc.h"

/* Signal flags: written by the handler, read and cleared by sys.signal(). A signal handler can
 * only reach static storage, so these are the one kind of process-wide state here. */
static const struct { const char *name; int sig; } signames[] = {
    {"TERM", SIGTERM}, {"INT", SIGINT}, {"HUP", SIGHUP}, {"USR1", SIGUSR1}, {"USR2", SIGUSR2},
};
#define NSIG_NAMES (sizeof signames / sizeof signames[0])
static volatile sig_atomic_t pending[NSIG_NAMES];

static void on_signal(int sig)
{
    size_t i;
    for (i = 0; i < NSIG_NAMES; i++)
        if (signames[i].sig == sig)
            pending[i] = 1;
}

/* Pushes nil, "sys.<what>: <path>: <strerror>", errno and returns 3. */
static int fail_errno(lua_State *L, const char *what, const char *path)
{
    int e = errno;
    luaL_pushfail(L);
    lua_pushfstring(L, "sys.%s: %s: %s", what, path, strerror(e));
    lua_pushinteger(L, e);
    return 3;
}

/* sys.now() -> seconds on a monotonic clock (float) */
static int l_now(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    return 1;
}

/* sys.time() -> seconds since the epoch (float) */
static int l_time(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    return 1;
}

/* sys.sleep(seconds): returns early (without error) when a signal arrives */
static int l_sleep(lua_State *L)
{
    lua_Number s = luaL_checknumber(L, 1);
    struct timespec ts;
    if (s <= 0)
        return 0;
    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - (lua_Number)ts.tv_sec) * 1e9);
    nanosleep(&ts, NULL);
    return 0;
}

/* sys.signals(name...) : from now on, these signals ("TERM", "INT", "HUP", "USR1", "USR2") set
 * a flag instead of their default action; sys.signal() reads the flags. */
static int l_signals(lua_State *L)
{
    int i, n = lua_gettop(L);
    for (i = 1; i <= n; i++) {
        const char *name = luaL_checkstring(L, i);
        size_t k;
        struct sigaction sa;
        for (k = 0; k < NSIG_NAMES; k++)
            if (strcmp(signames[k].name, name) == 0)
                break;
        if (k == NSIG_NAMES)
            return luaL_argerror(L, i, lua_pushfstring(L, "unknown signal '%s'", name));
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(signames[k].sig, &sa, NULL);
    }
    return 0;
}

/* sys.signal() -> the name of a signal received since the last call (and clears it) | nil */
static int l_signal(lua_State *L)
{
    size_t i;
    for (i = 0; i < NSIG_NAMES; i++) {
        if (pending[i]) {
            pending[i] = 0;
            lua_pushstring(L, signames[i].name);
            return 1;
        }
    }
    lua_pushnil(L);
    return 1;
}

/* sys.kill(pid, name) -> true | nil, err   (for tests: "TERM", "KILL", "HUP", ...) */
static int l_kill(lua_State *L)
{
    pid_t pid = (pid_t)luaL_checkinteger(L, 1);
    const char *name = luaL_checkstring(L, 2);
    int sig = strcmp(name, "KILL") == 0 ? SIGKILL : strcmp(name, "STOP") == 0 ? SIGSTOP
            : strcmp(name, "CONT") == 0 ? SIGCONT : -1;
    size_t k;
    for (k = 0; sig < 0 && k < NSIG_NAMES; k++)
        if (strcmp(signames[k].name, name) == 0)
            sig = signames[k].sig;
    if (sig < 0)
        return luaL_argerror(L, 2, lua_pushfstring(L, "unknown signal '%s'", name));
    if (kill(pid, sig) != 0)
        return fail_errno(L, "kill", lua_tostring(L, 1));
    lua_pushboolean(L, 1);
    return 1;
}

/* sys.stat(path) -> {dev=, ino=, size=, mtime=, mode=} | nil, err, errno */
static int l_stat(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    struct stat st;
    if (stat(path, &st) != 0)
        return fail_errno(L, "stat", path);
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, (lua_Integer)st.st_dev);
    lua_setfield(L, -2, "dev");
    lua_pushinteger(L, (lua_Integer)st.st_ino);
    lua_setfield(L, -2, "ino");
    lua_pushinteger(L, (lua_Integer)st.st_size);
    lua_setfield(L, -2, "size");
    lua_pushinteger(L, (lua_Integer)st.st_mtime);
    lua_setfield(L, -2, "mtime");
    lua_pushinteger(L, (lua_Integer)(st.st_mode & 07777));
    lua_setfield(L, -2, "mode");
    return 1;
}

/* sys.realpath(path) -> absolute path | nil, err */
static int l_realpath(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    char buf[PATH_MAX];
    if (realpath(path, buf) == NULL)
        return fail_errno(L, "realpath", path);
    lua_pushstring(L, buf);
    return 1;
}

/* Writes all of p[0, len) to fd. Returns 0 or -1 (errno set). */
static int write_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* sys.write_atomic(path, data) -> true | nil, err
 * Writes data to path.tmp, fsyncs it, renames it over path and fsyncs the directory: after a
 * crash, path holds either the old or the new data, never a mix. */
static int l_write_atomic(lua_State *L)
{
    size_t len;
    const char *path = luaL_checkstring(L, 1);
    const char *data = luaL_checklstring(L, 2, &len);
    char tmp[PATH_MAX], dir[PATH_MAX];
    const char *slash;
    int fd;

    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return luaL_argerror(L, 1, "path too long");
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return fail_errno(L, "write_atomic", tmp);
    if (write_all(fd, data, len) != 0 || fsync(fd) != 0) {
        int e = errno;
        close(fd);
        unlink(tmp);
        errno = e;
        return fail_errno(L, "write_atomic", tmp);
    }
    close(fd);
    if (rename(tmp, path) != 0)
        return fail_errno(L, "write_atomic", path);
    slash = strrchr(path, '/');
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) + 1 : 1, slash ? path : ".");
    fd = open(dir, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* sys.listdir(path) -> array of entry names (without "." and "..") | nil, err */
static int l_listdir(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    DIR *d = opendir(path);
    struct dirent *e;
    int n = 0;
    if (d == NULL)
        return fail_errno(L, "listdir", path);
    lua_newtable(L);
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        lua_pushstring(L, e->d_name);
        lua_rawseti(L, -2, ++n);
    }
    closedir(d);
    return 1;
}

/* sys.isatty(fd) -> boolean */
static int l_isatty(lua_State *L)
{
    lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
    return 1;
}

/* sys.getpid() -> integer */
static int l_getpid(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)getpid());
    return 1;
}

/* sys.rss() -> resident set size in bytes (from /proc/self/statm), or nil */
static int l_rss(lua_State *L)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, resident = 0;
    if (f == NULL || fscanf(f, "%ld %ld", &pages, &resident) != 2) {
        if (f != NULL)
            fclose(f);
        lua_pushnil(L);
        return 1;
    }
    fclose(f);
    lua_pushinteger(L, (lua_Integer)resident * sysconf(_SC_PAGESIZE));
    return 1;
}

int luaopen_lproc_sys(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"now", l_now},
        {"time", l_time},
        {"sleep", l_sleep},
        {"signals", l_signals},
        {"signal", l_signal},
        {"kill", l_kill},
        {"stat", l_stat},
        {"realpath", l_realpath},
        {"write_atomic", l_write_atomic},
        {"listdir", l_listdir},
        {"isatty", l_isatty},
        {"getpid", l_getpid},
        {"rss", l_rss},
        {NULL, NULL},
    };
    luaL_newlib(L, funcs);
    return 1;
}
