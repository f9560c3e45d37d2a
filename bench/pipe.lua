-- bench/pipe.lua: the server side of bench/run.sh (run by lproc; URLs from the environment).
--
--   lproc bench/pipe.lua reset           delete both queues, drop raw_log, clean_log and
--                                        clean_log_reject: the pipeline as never run
--   lproc bench/pipe.lua wait N TIMEOUT  prints "ready" once it holds its baseline, then waits
--                                        until N lines are committed in raw_log and N in
--                                        clean_log + clean_log_reject; prints
--                                        "done EPOCH_SECONDS" (the moment it saw them all)
--                                        or "timeout RAW CLEAN REJECT" after TIMEOUT seconds
--   lproc bench/pipe.lua check N         prints "RAW CLEAN REJECT LOST BOTH": LOST = lines of
--                                        raw_log in neither clean table, BOTH = in both;
--                                        exit status 1 unless RAW = CLEAN + REJECT = N and
--                                        LOST = BOTH = 0
--   lproc bench/pipe.lua depth           prints "LAKE CLEAN" (messages waiting in each queue)
--                                        every 0.5 s until SIGTERM
--   lproc bench/pipe.lua versions        prints the MariaDB server version
--
-- `wait` polls the server's Handler_write counter (rows written) every 20 ms: cheap, so the
-- poller does not slow the pipeline it measures. Once 2N rows are written it confirms with
-- COUNT(*), which sees committed rows only.
local mysql = require "lproc.mysql"
local amqp = require "lproc.amqp"
local sys = require "lproc.sys"

local function die(fmt, ...)
    io.stderr:write("bench/pipe.lua: ", string.format(fmt, ...), "\n")
    os.exit(2)
end

local function env(name)
    local v = os.getenv(name)
    if not v or v == "" then die("%s is not set", name) end
    return v
end

local function db()
    local c, err = mysql.connect(env("LPROC_MYSQL_URL"))
    if not c then die("%s", err) end
    return c
end

local function count(c, table_name)
    local row, err = c:query_one("SELECT COUNT(*) AS n FROM " .. table_name)
    if not row then
        if err and err:find("doesn't exist", 1, true) then return 0 end
        die("%s", tostring(err))
    end
    return math.tointeger(tonumber(row.n))
end

local function inserted(c)
    local row, err = c:query_one("SHOW GLOBAL STATUS LIKE 'Handler_write'")
    if not row then die("cannot read Handler_write: %s", tostring(err)) end
    return math.tointeger(tonumber(row.Value))
end

local cmd = arg[1]
if cmd == "reset" then
    local conn, err = amqp.connect(env("LPROC_AMQP_URL"))
    if not conn then die("%s", err) end
    for _, q in ipairs({ "queue-data-lake", "queue-data-clean" }) do
        local ok, qerr = conn:queue_delete(q)
        if not ok then die("%s", qerr) end
    end
    conn:close()
    local c = db()
    for _, t in ipairs({ "raw_log", "clean_log", "clean_log_reject" }) do
        local ok, derr = c:execute("DROP TABLE IF EXISTS " .. t)
        if not ok then die("%s", derr) end
    end
    c:close()
elseif cmd == "wait" then
    local n, timeout = math.tointeger(tonumber(arg[2])), tonumber(arg[3] or 600)
    if not n then die("usage: wait N TIMEOUT") end
    local c = db()
    local base = inserted(c)
    io.stdout:write("ready\n")
    io.stdout:flush()
    local deadline = sys.now() + timeout
    while inserted(c) - base < 2 * n and sys.now() < deadline do sys.sleep(0.02) end
    while sys.now() < deadline do
        local raw = count(c, "raw_log")
        if raw >= n and count(c, "clean_log") + count(c, "clean_log_reject") >= n then
            io.stdout:write(string.format("done %.6f\n", sys.time()))
            os.exit(0)
        end
        sys.sleep(0.02)
    end
    io.stdout:write(string.format("timeout %d %d %d\n", count(c, "raw_log"), count(c, "clean_log"),
        count(c, "clean_log_reject")))
    os.exit(1)
elseif cmd == "check" then
    local n = math.tointeger(tonumber(arg[2]))
    if not n then die("usage: check N") end
    local c = db()
    local raw, clean, reject = count(c, "raw_log"), count(c, "clean_log"), count(c, "clean_log_reject")
    if raw == 0 or clean + reject == 0 then
        print(string.format("%d %d %d - -", raw, clean, reject))
        os.exit(1)
    end
    local lost = c:query_one([[SELECT COUNT(*) AS n FROM raw_log r
        WHERE NOT EXISTS (SELECT 1 FROM clean_log c WHERE c.id = r.id)
          AND NOT EXISTS (SELECT 1 FROM clean_log_reject j WHERE j.id = r.id)]])
    local both = c:query_one("SELECT COUNT(*) AS n FROM clean_log c JOIN clean_log_reject j USING (id)")
    lost, both = math.tointeger(tonumber(lost.n)), math.tointeger(tonumber(both.n))
    print(string.format("%d %d %d %d %d", raw, clean, reject, lost, both))
    os.exit(raw == n and clean + reject == n and lost == 0 and both == 0 and 0 or 1)
elseif cmd == "depth" then
    local conn, err = amqp.connect(env("LPROC_AMQP_URL"))
    if not conn then die("%s", err) end
    sys.signals("TERM", "INT")
    while not sys.signal() do
        local _, lake = conn:queue_declare("queue-data-lake", { passive = true })
        local _, clean = conn:queue_declare("queue-data-clean", { passive = true })
        io.stdout:write(string.format("%d %d\n", lake or 0, clean or 0))
        io.stdout:flush()
        sys.sleep(0.5)
    end
    conn:close()
elseif cmd == "versions" then
    local c = db()
    print("MariaDB " .. c:server_version())
    c:close()
else
    die("usage: lproc bench/pipe.lua reset | wait N TIMEOUT | check N | depth | versions")
end
