-- The pipeline end to end, on the real servers: producer -> RabbitMQ -> lake and clean
-- consumers -> MariaDB. Every test ends with exact counts: nothing lost, nothing duplicated.
local T = require "testing"
local P = require "pipeline"
local sys = require "lproc.sys"
local amqp = require "lproc.amqp"
local util = require "lproc.util"

local tmp = P.tmp
local LOG = tmp .. "/access.log"
local N = 10000

local function consumers(extra)
    extra = extra or "--idle-exit 3"
    return P.spawn("scripts/lake.lua --progress 0 " .. extra, "lake"),
        P.spawn("scripts/clean.lua --progress 0 " .. extra, "clean")
end

local function finish(procs)
    for _, p in ipairs(procs) do
        local rc = P.wait(p, 180)
        if rc ~= 0 then
            P.kill(p, "KILL")
            error(string.format("%s exited with %s:\n%s", p.name, tostring(rc), P.output(p)))
        end
    end
end

local function produce(args)
    local rc, out = P.run("scripts/producer.lua --progress 0 " .. args, "producer")
    T.eq(rc, 0, "producer status (" .. out .. ")")
    return out
end

P.genlog(LOG, N, 7)
local SRC = sys.realpath(LOG)
local function exact(files) T.eq(P.check_exact(files or { { path = LOG, source = SRC } }), nil, "pipeline state") end

-- A file of the first n lines of LOG, under the name given. -> its path, LOG's lines
local function head(name, n)
    local path, sample = tmp .. "/" .. name, P.lines(LOG)
    local f = assert(io.open(path, "wb"))
    for i = 1, n do f:write(sample[i][1], "\n") end
    f:close()
    return path, sample
end

T.test("10k lines: every line once in raw_log, every id once in clean_log or clean_log_reject", function()
    P.reset()
    local out = produce(LOG)
    T.ok(out:find("producer: 10000 lines", 1, true), "summary line: " .. out)
    local lake, clean = consumers()
    finish({ lake, clean })
    exact()
    T.ok(P.counts().reject > 0, "the sample has malformed lines, so rejects")
    T.ok(P.counts().clean > 9000, "most lines are clean")
end)

T.test("sql/schema.sql creates the same tables as the consumers", function()
    local mysql = require "lproc.mysql"
    local url = T.env("LPROC_TEST_MYSQL_URL")
    assert(P.db():execute("CREATE DATABASE IF NOT EXISTS lproc_test"))
    local other = assert(mysql.connect((url:gsub("/lproc$", "/lproc_test"))))
    local f = assert(io.open("sql/schema.sql"))
    local sql = f:read("a")
    f:close()
    for stmt in sql:gsub("%-%-[^\n]*", ""):gmatch("[^;]+") do
        if stmt:find("%S") then assert(other:execute(stmt)) end
    end
    for _, t in ipairs({ "raw_log", "clean_log", "clean_log_reject" }) do
        -- (the next seq, AUTO_INCREMENT=N, depends on the rows there)
        local a = assert(P.db():query("SHOW CREATE TABLE " .. t))[1]["Create Table"]:gsub(" AUTO_INCREMENT=%d+", "")
        local b = assert(other:query("SHOW CREATE TABLE " .. t))[1]["Create Table"]:gsub(" AUTO_INCREMENT=%d+", "")
        T.eq(a, b, t)
        assert(other:execute("DROP TABLE " .. t))
    end
    other:close()
end)

T.test("running the producer again adds no row", function()
    produce(LOG)
    local lake, clean = consumers("--idle-exit 2")
    finish({ lake, clean })
    exact()
end)

T.test("batch mode gives the same rows as one message per line", function()
    local before = assert(P.db():query("SELECT id, line FROM raw_log ORDER BY id"))
    local before_clean = assert(P.db():query("SELECT * FROM clean_log ORDER BY id"))
    P.reset()
    produce("--batch 100 " .. LOG)
    local lake, clean = consumers()
    finish({ lake, clean })
    exact()
    local after = assert(P.db():query("SELECT id, line FROM raw_log ORDER BY id"))
    T.ok(#after == #before and T.deq(after, before), "raw_log identical to the one-message-per-line run")
    local after_clean = assert(P.db():query("SELECT * FROM clean_log ORDER BY id"))
    for _, r in ipairs(after_clean) do r.ingested_at, r.seq = nil, nil end
    for _, r in ipairs(before_clean) do r.ingested_at, r.seq = nil, nil end
    T.ok(T.deq(after_clean, before_clean), "clean_log identical to the one-message-per-line run")
end)

-- Runs the consumers while `disturb(progress)` breaks something once rows start to arrive.
-- The consumers' --idle-exit: after a broker restart the producer may reconnect up to one
-- backoff step (at most about 6 s) after them, and only then publish the rest of the file.
local function disturbed(name, disturb, producer_args, idle)
    P.reset()
    local lake, clean = consumers("--idle-exit " .. (idle or 4) .. " --batch-rows 200")
    local prod = P.spawn("scripts/producer.lua --progress 0 " .. (producer_args or "") .. " " .. LOG, "producer")
    T.ok(P.wait_until(function() return P.counts().raw >= 1000 end, 60), name .. ": rows started to arrive")
    disturb()
    finish({ prod, lake, clean })
    local c = P.wait_rows(N, 5)
    exact()
    return c
end

T.test("kill -9 of each consumer mid-run, then a restart", function()
    for _, which in ipairs({ "lake", "clean" }) do
        P.reset()
        produce(LOG)
        local victim = P.spawn("scripts/" .. which .. ".lua --progress 0 --batch-rows 100", which)
        local tbl = which == "lake" and "raw_log" or "clean_log"
        T.ok(P.wait_until(function()
            local ok, n = pcall(P.count, "SELECT COUNT(*) FROM " .. tbl)
            return ok and n >= 1500
        end, 60), which .. " started writing")
        P.kill(victim, "KILL")
        P.wait(victim, 10)
        local lake, clean = consumers()
        finish({ lake, clean })
        exact()
    end
end)

T.test("RabbitMQ stopped and restarted mid-run", function()
    disturbed("broker", function()
        P.servers("stop", "rabbitmq")
        sys.sleep(1)
        P.servers("resume", "rabbitmq")
    end, nil, 10)
end)

T.test("MariaDB stopped and restarted mid-run", function()
    disturbed("database", function()
        P.servers("stop", "mariadb")
        sys.sleep(1)
        P.servers("resume", "mariadb")
    end)
end)

T.test("a lock held by another session: the consumer waits and retries, then stores every line", function()
    local function root_sql(sql)
        T.eq(P.sh(string.format("mariadb --defaults-file='%s' -uroot -e '%s'", T.env("LPROC_MYSQL_ROOT_CNF"), sql)),
            true, sql)
    end
    local path, sample = head("locked.log", 100)
    local src = sys.realpath(path)
    P.reset()
    root_sql("SET GLOBAL innodb_lock_wait_timeout = 1")   -- for sessions opened from now on
    local ok, err = pcall(function()
        local lake = P.spawn("scripts/lake.lua --progress 0 --idle-exit 3", "lake")
        T.ok(P.consuming(lake), "lake started")
        -- Another session inserts the first line's id and keeps its transaction open.
        local other = assert(require("lproc.mysql").connect(T.env("LPROC_TEST_MYSQL_URL")))
        assert(other:begin())
        assert(other:execute("INSERT INTO raw_log (id, line) VALUES (?, ?)", util.lineid(src, 0, sample[1][1]), "held"))
        produce(path)
        T.ok(P.wait_until(function() return P.output(lake):find("Lock wait timeout", 1, true) end, 30),
            "the consumer met the lock: " .. P.output(lake))
        sys.sleep(2)
        assert(other:rollback())
        other:close()
        finish({ lake })
        T.eq(P.count("SELECT COUNT(*) FROM raw_log"), 100)
        T.eq(P.count("SELECT COUNT(*) FROM raw_log WHERE line = ? AND `offset` = 0 AND source = ?", sample[1][1], src), 1)
        T.ok(not P.output(lake):find("refused", 1, true), "no line was refused: " .. P.output(lake))
    end)
    root_sql("SET GLOBAL innodb_lock_wait_timeout = 50")
    if not ok then error(err, 0) end
end)

T.test("a table altered under the running consumer: one clear line, exit 1, nothing acknowledged", function()
    P.reset()
    local clean = P.spawn("scripts/clean.lua --progress 0 --idle-exit 5", "clean")
    T.ok(P.consuming(clean), "clean started")
    assert(P.db():execute("ALTER TABLE clean_log DROP COLUMN browser"))
    produce(LOG)
    T.eq(P.wait(clean, 60), 1, "clean status")
    local out = P.output(clean)
    T.ok(out:find("clean: cannot write to MySQL: mysql.insert: Unknown column 'browser'", 1, true), out)
    T.eq(P.counts().reject, 0, "no line became a reject")
    T.ok(P.waiting():find("clean " .. N .. ")", 1, true), "every message still queued" .. P.waiting())
    -- Once the table is right again, the same messages make the rows.
    assert(P.db():execute("DROP TABLE clean_log"))
    finish({ consumers() })
    exact()
end)

T.test("a broker alarm blocks publishing: the producer says so and waits; SIGTERM stops it", function()
    local function ctl(args)
        T.eq(P.sh("tests/servers.sh ctl -q " .. args .. " > /dev/null 2>&1"), true, "rabbitmqctl " .. args)
    end
    local path = head("alarm.log", 3000)
    local function blocked(p)
        T.ok(P.wait_until(function() return P.output(p):find("blocks publishing", 1, true) end, 30),
            "the producer says it is blocked: " .. P.output(p))
    end
    P.reset()
    ctl("set_disk_free_limit 100000GB")   -- a disk alarm: the broker blocks every publisher
    local ok, err = pcall(function()
        local p = P.spawn("scripts/producer.lua --progress 0 " .. path, "blocked")
        blocked(p)
        P.kill(p, "TERM")
        T.eq(P.wait(p, 10), 1, "status after SIGTERM: " .. P.output(p))
        T.ok(P.output(p):find("stopped while the broker blocks publishing (low on disk)", 1, true), P.output(p))
        p = P.spawn("scripts/producer.lua --progress 0 " .. path, "blocked-then-not")
        blocked(p)
        T.eq(P.wait(p, 1), nil, "still waiting")
        ctl("set_disk_free_limit 50MB")
        T.eq(P.wait(p, 60), 0, "status once the alarm is over: " .. P.output(p))
        T.ok(P.output(p):find("the broker takes messages again", 1, true), P.output(p))
    end)
    ctl("set_disk_free_limit 50MB")
    if not ok then error(err, 0) end
    finish({ consumers() })
    T.eq(P.check_exact({ { path = path, source = sys.realpath(path) } }), nil, "every line once")
end)

T.test("SIGTERM: consumers flush, commit, ack and exit 0", function()
    P.reset()
    produce(LOG)
    local lake, clean = consumers("--batch-rows 5000 --batch-ms 60000")
    T.ok(P.consuming(lake))
    sys.sleep(1)
    P.kill(lake, "TERM")
    P.kill(clean, "TERM")
    T.eq(P.wait(lake, 30), 0, "lake status")
    T.eq(P.wait(clean, 30), 0, "clean status")
    -- What they took is committed; the rest is still queued. A second run finishes the job.
    local l2, c2 = consumers()
    finish({ l2, c2 })
    exact()
end)

T.test("SIGHUP reloads the rules; a broken script is refused and the old rules stay", function()
    P.reset()
    local src = assert(io.open("scripts/clean.lua")):read("a")
    local rules = tmp .. "/rules.lua"
    local function write_rules(text)
        local f = assert(io.open(rules, "wb")); f:write(text); f:close()
    end
    write_rules(src)
    local clean = P.spawn(rules .. " --progress 0 --batch-ms 50", "clean-hup")
    local function batch(name, n)
        local path = tmp .. "/" .. name .. ".log"
        local f = assert(io.open(path, "wb"))
        for i = 1, n do
            f:write(string.format('192.0.2.1 - - [01/Nov/2022:10:00:00 +0000] "GET /%s/%d HTTP/1.1" 200 1 "-" "t"\n', name, i))
        end
        f:close()
        produce(path)
        return path
    end
    local function rejects(reason)
        return P.count("SELECT COUNT(*) FROM clean_log_reject WHERE reason = ?", reason)
    end
    batch("before", 50)
    T.ok(P.wait_until(function() return (pcall(P.count, "SELECT COUNT(*) FROM clean_log")) and P.count("SELECT COUNT(*) FROM clean_log") == 50 end, 30), "first rules")
    write_rules((src:gsub("function R%.map%(rec%)", "function R.map(rec) do return false, 'new rules' end")))
    P.kill(clean, "HUP")
    T.ok(P.wait_until(function() return P.output(clean):find("rules reloaded", 1, true) end, 30), "reloaded")
    batch("after", 30)
    T.ok(P.wait_until(function() return rejects("new rules") == 30 end, 30), "new rules apply")
    write_rules("this is not Lua")
    P.kill(clean, "HUP")
    T.ok(P.wait_until(function() return P.output(clean):find("reload refused", 1, true) end, 30), "refused: " .. P.output(clean))
    batch("broken", 20)
    T.ok(P.wait_until(function() return rejects("new rules") == 50 end, 30), "old rules stay")
    P.kill(clean, "TERM")
    T.eq(P.wait(clean, 30), 0, "clean exits 0")
    T.eq(P.count("SELECT COUNT(*) FROM clean_log"), 50)
end)

T.test("SIGHUP while MariaDB is down: the clean consumer keeps waiting, then reloads", function()
    P.reset()
    local path = head("hup-outage.log", 500)
    local clean = P.spawn("scripts/clean.lua --progress 0 --batch-ms 50", "clean-hup-outage")
    T.ok(P.consuming(clean), "consuming")
    local ok, err = pcall(function()
        P.servers("stop", "mariadb")
        produce(path)
        T.ok(P.wait_until(function() return P.output(clean):find("reconnecting", 1, true) end, 30),
            "the write failed: " .. P.output(clean))
        P.kill(clean, "HUP")
        T.eq(P.wait(clean, 2), nil, "still waiting after SIGHUP: " .. P.output(clean))
    end)
    P.servers("resume", "mariadb")
    if not ok then P.kill(clean, "KILL"); error(err, 0) end
    T.ok(P.wait_until(function() return P.output(clean):find("rules reloaded", 1, true) end, 60),
        "reloaded once the database is back: " .. P.output(clean))
    P.kill(clean, "TERM")
    T.eq(P.wait(clean, 30), 0, "clean exits 0: " .. P.output(clean))
    T.eq(P.count("SELECT COUNT(*) FROM clean_log") + P.count("SELECT COUNT(*) FROM clean_log_reject"), 500)
end)

-- Follow mode -------------------------------------------------------------------------------

local function append(path, from, to)
    local f = assert(io.open(path, "ab"))
    for i = from, to do
        f:write(string.format('203.0.113.%d - - [01/Nov/2022:10:00:00 +0000] "GET /follow/%d HTTP/1.1" 200 %d "-" "t"\n',
            i % 250, i, i))
    end
    f:close()
end

local function raw_lines()
    local ok, a = pcall(P.count, "SELECT COUNT(*) FROM raw_log")   -- the table may not exist yet
    if not ok then return 0, 0 end
    return a, P.count("SELECT COUNT(DISTINCT line) FROM raw_log")
end

T.test("follow: append, rename rotation, copytruncate, kill -9 of the producer", function()
    P.reset()
    local F = tmp .. "/follow.log"
    local CK = tmp .. "/follow.checkpoint"
    os.remove(F); os.remove(CK)
    append(F, 1, 1000)
    local lake, clean = consumers("--idle-exit 30")
    local prod = P.spawn(string.format("scripts/producer.lua --progress 0 --follow --checkpoint %s %s", CK, F), "follow")
    local function have(n)
        return P.wait_until(function() local a = raw_lines(); return a >= n end, 60)
    end
    T.ok(have(1000), "initial lines")
    append(F, 1001, 2000)
    T.ok(have(2000), "appended lines")
    -- rename rotation, with a last line written to the old file after the rename
    os.rename(F, F .. ".1")
    append(F .. ".1", 2001, 2010)
    append(F, 2011, 2500)
    T.ok(have(2500), "lines after rename rotation")
    -- copytruncate
    assert(os.execute(string.format("cp %s %s.2 && : > %s", F, F, F)))
    sys.sleep(0.5)
    append(F, 2501, 2800)
    T.ok(have(2800), "lines after copytruncate")
    -- kill -9, lines written while down, restart from the checkpoint
    P.kill(prod, "KILL")
    P.wait(prod, 10)
    append(F, 2801, 3000)
    prod = P.spawn(string.format("scripts/producer.lua --progress 0 --follow --checkpoint %s %s", CK, F), "follow2")
    T.ok(have(3000), "lines after the restart")
    sys.sleep(1)
    P.kill(prod, "TERM")
    T.eq(P.wait(prod, 30), 0, "producer exits 0 on SIGTERM")
    finish({ lake, clean })
    local total, distinct = raw_lines()
    T.eq({ total, distinct }, { 3000, 3000 }, "raw_log rows, distinct lines")
    local c = P.counts()
    T.eq(c.clean + c.reject, 3000, "clean + reject")
    T.eq(c.both, 0)
end)

T.test("--max-line: a longer line is stored cut in raw_log and rejected with its reason", function()
    local path = tmp .. "/long.log"
    local sample = P.lines(LOG)
    local first, second = sample[1][1], sample[2][1]
    local long = second .. " " .. string.rep("x", 3000)
    for _, mode in ipairs({ "", "--batch 10 " }) do
        P.reset()
        local f = assert(io.open(path, "wb"))
        f:write(first, "\n", long, "\n", second, "\n")
        f:close()
        local out = produce(mode .. "--max-line 1000 " .. path)
        T.ok(out:find("1 lines cut to --max-line", 1, true), mode .. "summary: " .. out)
        finish({ consumers() })
        local id = util.lineid(sys.realpath(path), #first + 1, long:sub(1, 1000))
        T.eq(P.count("SELECT COUNT(*) FROM raw_log"), 3, mode .. "raw_log rows")
        T.eq(P.count("SELECT COUNT(*) FROM raw_log WHERE id = ? AND line = ? AND `offset` = ?", id,
            long:sub(1, 1000), #first + 1), 1, mode .. "the cut line in raw_log")
        local n = P.counts()
        T.eq({ n.clean + n.reject, n.both }, { 3, 0 }, mode .. "clean + reject")
        T.eq(P.count("SELECT COUNT(*) FROM clean_log_reject WHERE id = ? AND reason LIKE 'line was cut%'",
            id), 1, mode .. "the cut line is a reject, with its reason")
    end
end)

T.test("a batch message from another client with a record that is not OFFSET SP LINE", function()
    P.reset()
    local lake, clean = consumers("--idle-exit 3")
    T.ok(P.consuming(lake, clean), "consumers started")
    local c = assert(amqp.connect(T.env("LPROC_TEST_AMQP_URL")))
    assert(c:publish("logs", "logs", "10 first line\nx.5 not an offset\n20 after", {
        content_type = "application/vnd.lproc.lines+v1", persistent = true,
        headers = { ["x-source"] = "another client", ["x-offset"] = 10 },
    }))
    -- Batch-typed, but without a usable x-source: each body is kept whole, as one line.
    assert(c:publish("logs", "logs", "30 source is not a string", {
        content_type = "application/vnd.lproc.lines+v1", headers = { ["x-source"] = true },
    }))
    assert(c:publish("logs", "logs", "40 no headers", { content_type = "application/vnd.lproc.lines+v1" }))
    -- Single lines whose x-offset no column can hold: stored without an offset.
    for _, off in ipairs({ -5, 1.5, 2 ^ 70 }) do
        assert(c:publish("logs", "logs", "offset " .. off, { headers = { ["x-source"] = "s", ["x-offset"] = off } }))
    end
    c:close()
    -- The consumers do not crash on it (it would come back and crash them again): the good
    -- record is a line, and what follows the bad one is kept whole as one more line.
    finish({ lake, clean })
    T.eq(P.count("SELECT COUNT(*) FROM raw_log"), 7)
    T.eq(P.count("SELECT COUNT(*) FROM raw_log WHERE line LIKE 'offset %' AND `offset` IS NULL AND source = 's'"), 3)
    T.eq(P.count("SELECT COUNT(*) FROM raw_log WHERE line = ? AND `offset` = 10", "first line"), 1)
    T.eq(P.count("SELECT COUNT(*) FROM raw_log WHERE line = ?", "x.5 not an offset\n20 after"), 1)
    T.eq(P.count("SELECT COUNT(*) FROM raw_log WHERE line = ? AND source IS NULL", "30 source is not a string"), 1)
    T.eq(P.count("SELECT COUNT(*) FROM raw_log WHERE line = ? AND source IS NULL", "40 no headers"), 1)
    local n = P.counts()
    T.eq({ n.clean + n.reject, n.both }, { 7, 0 })
end)

T.done()
