-- pipeline.lua: helpers for the end-to-end tests: child processes, the test servers, the
-- state of the queues and tables. Children get the server URLs from the environment that
-- tests/run.sh exported (never on a command line).
local T = require "testing"
local mysql = require "lproc.mysql"
local amqp = require "lproc.amqp"
local sys = require "lproc.sys"
local reader = require "lproc.reader"
local util = require "lproc.util"

local P = {}

P.tmp = T.env("LPROC_TEST_TMP")
P.lproc = sys.realpath(os.getenv("LPROC") or "./lproc")
P.wrap = os.getenv("LPROC_WRAP") or ""

local function sh(cmd)
    local ok, how, code = os.execute(cmd)
    return ok, code, how
end
P.sh = sh

-- P.db() -> a MySQL connection to the test database (cached).
local db
function P.db()
    if db then
        if db:ping() then return db end
        db:close()
    end
    db = assert(mysql.connect(T.env("LPROC_TEST_MYSQL_URL")))
    return db
end

-- P.reset(): empty queues and tables, as if the pipeline had never run.
function P.reset()
    local c = assert(amqp.connect(T.env("LPROC_TEST_AMQP_URL")))
    for _, q in ipairs({ "queue-data-lake", "queue-data-clean" }) do c:queue_delete(q) end
    c:close()
    local d = P.db()
    for _, t in ipairs({ "raw_log", "clean_log", "clean_log_reject" }) do
        assert(d:execute("DROP TABLE IF EXISTS " .. t))
    end
end

local seq = 0
-- P.spawn(args, name [, env]) -> process handle {pid=, log=, rcfile=}. args is the lproc
-- command line after the binary (a string, already shell-quoted where needed); env, the
-- arguments of an env(1) run before it (e.g. "-u VAR VAR2=value").
function P.spawn(args, name, env)
    seq = seq + 1
    local base = string.format("%s/%s-%d-%d", P.tmp, name or "proc", sys.getpid(), seq)
    local p = { log = base .. ".log", rcfile = base .. ".rc", name = name }
    os.remove(p.rcfile)
    local cmd = string.format("(%s %s %s %s >> %s 2>&1; echo $? > %s) < /dev/null > /dev/null 2>&1 & echo $!",
        env and "env " .. env or "", P.wrap, P.lproc, args, p.log, p.rcfile)
    local f = assert(io.popen(cmd))
    local subshell = tonumber(f:read("l"))
    f:close()
    -- The subshell's child is lproc: find it (its parent is the subshell).
    for _ = 1, 200 do
        local g = io.popen("pgrep -P " .. subshell)
        local pid = g and tonumber(g:read("l"))
        if g then g:close() end
        if pid then p.pid = pid break end
        if io.open(p.rcfile) then break end
        sys.sleep(0.01)
    end
    return p
end

-- P.wait(p [, timeout]) -> exit status | nil when still running after timeout seconds.
function P.wait(p, timeout)
    local t_end = sys.now() + (timeout or 60)
    repeat
        local f = io.open(p.rcfile)
        if f then
            local rc = tonumber(f:read("l"))
            f:close()
            if rc then return rc end
        end
        sys.sleep(0.05)
    until sys.now() > t_end
    return nil
end

-- P.kill(p, sig): sends a signal to the lproc process.
function P.kill(p, sig)
    if p.pid then sys.kill(p.pid, sig or "KILL") end
end

-- P.output(p) -> what the process wrote on stdout and stderr.
function P.output(p)
    local f = io.open(p.log, "rb")
    if not f then return "" end
    local s = f:read("a")
    f:close()
    return s
end

-- P.run(args) -> status, output: runs lproc in the foreground.
function P.run(args, name)
    local p = P.spawn(args, name)
    local rc = P.wait(p, 300)
    return rc, P.output(p)
end

-- P.count(sql, ...) -> the integer in the first column of the first row.
function P.count(sql, ...)
    local rows = assert(P.db():query(sql, ...))
    local _, v = next(rows[1] or {})
    return tonumber(v) or 0
end

-- P.counts() -> {raw=, clean=, reject=, both=} (both: ids in clean_log AND clean_log_reject)
function P.counts()
    local function n(t)
        local ok, rows = pcall(P.db().query, P.db(), "SELECT COUNT(*) AS n FROM " .. t)
        return ok and rows and rows[1] and tonumber(rows[1].n) or 0
    end
    local c = { raw = n("raw_log"), clean = n("clean_log"), reject = n("clean_log_reject") }
    local ok, rows = pcall(P.db().query, P.db(),
        "SELECT COUNT(*) AS n FROM clean_log c JOIN clean_log_reject r ON r.id = c.id")
    c.both = ok and rows and rows[1] and tonumber(rows[1].n) or 0
    return c
end

-- P.wait_rows(n, timeout) -> counts once raw = n and clean + reject = n (or at the timeout).
function P.wait_rows(n, timeout)
    local t_end = sys.now() + (timeout or 120)
    local c
    repeat
        c = P.counts()
        if c.raw >= n and c.clean + c.reject >= n then return c end
        sys.sleep(0.2)
    until sys.now() > t_end
    return c
end

-- P.wait_until(fn, timeout) -> true once fn() is true.
function P.wait_until(fn, timeout)
    local t_end = sys.now() + (timeout or 60)
    repeat
        if fn() then return true end
        sys.sleep(0.05)
    until sys.now() > t_end
    return false
end

-- P.consuming(p, ...) -> true once every consumer given has said it is consuming (30 s at most).
function P.consuming(...)
    local procs = { ... }
    return P.wait_until(function()
        for _, p in ipairs(procs) do
            if not P.output(p):find("consuming", 1, true) then return false end
        end
        return true
    end, 30)
end

-- P.lines(path) -> array of {line, offset} as the producer reads them.
function P.lines(path)
    local r = assert(reader.open(path))
    local t = {}
    for l, o in r:lines() do t[#t + 1] = { l, o } end
    r:close()
    return t
end

-- P.waiting() -> " (messages waiting: lake N, clean M)": missing rows still in a queue are
-- not lost, only not consumed (a consumer left too early).
function P.waiting()
    local c = amqp.connect(T.env("LPROC_TEST_AMQP_URL"))
    if not c then return " (broker unreachable)" end
    local _, lake = c:queue_declare("queue-data-lake", { passive = true })
    local _, clean = c:queue_declare("queue-data-clean", { passive = true })
    c:close()
    return string.format(" (messages waiting: lake %s, clean %s)", tostring(lake), tostring(clean))
end

-- P.check_exact(files) -> nil | a description of what is wrong. files: { {path=, source=}, ... }
-- Every line of every file is in raw_log exactly once, byte for byte, and its id is in
-- exactly one of clean_log / clean_log_reject; nothing else is in the tables.
function P.check_exact(files)
    local want, n = {}, 0
    for _, f in ipairs(files) do
        for _, lo in ipairs(P.lines(f.path)) do
            local id = util.lineid(f.source, lo[2], lo[1])
            if want[id] == nil then n = n + 1 end
            want[id] = lo[1]
        end
    end
    local c = P.counts()
    if c.raw ~= n then return string.format("raw_log has %d rows, want %d%s", c.raw, n, P.waiting()) end
    if c.clean + c.reject ~= n then
        return string.format("clean_log %d + clean_log_reject %d rows, want %d%s", c.clean, c.reject,
            n, P.waiting())
    end
    if c.both ~= 0 then return string.format("%d ids are in both clean_log and clean_log_reject", c.both) end
    local rows = assert(P.db():query("SELECT id, line FROM raw_log"))
    for _, r in ipairs(rows) do
        local w = want[r.id]
        if w == nil then return "raw_log has an unexpected id " .. r.id end
        if w ~= r.line then return "raw_log line differs for id " .. r.id end
    end
    local ids = assert(P.db():query("SELECT id FROM clean_log UNION ALL SELECT id FROM clean_log_reject"))
    for _, r in ipairs(ids) do
        if want[r.id] == nil then return "clean tables have an unexpected id " .. r.id end
    end
    return nil
end

-- P.genlog(path, lines, seed [, extra args]): a sample log from scripts/genlog.lua.
function P.genlog(path, lines, seed, extra)
    local rc, out = P.run(string.format("scripts/genlog.lua --lines %d --seed %d --output %s %s",
        lines, seed or 1, path, extra or ""), "genlog")
    assert(rc == 0, "genlog failed: " .. out)
    return path
end

-- P.servers(cmd, which): tests/servers.sh stop|resume|kill rabbitmq|mariadb
function P.servers(cmd, which)
    local log = P.tmp .. "/servers.log"
    local ok = sh(string.format("tests/servers.sh %s %s > %s 2>&1", cmd, which, log))
    if not ok then
        local f = io.open(log)
        error("tests/servers.sh " .. cmd .. " " .. which .. " failed:\n" .. (f and f:read("a") or ""), 2)
    end
    if which == "mariadb" then db = nil end
end

return P
