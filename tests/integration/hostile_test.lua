-- Hostile input through the real pipeline: every line of tests/lib/hostile.lua is stored byte
-- for byte in raw_log and lands in exactly one of clean_log / clean_log_reject; no statement
-- but the consumers' own ever runs; no escape sequence reaches the terminal.
local T = require "testing"
local P = require "pipeline"
local H = require "hostile"
local sys = require "lproc.sys"
local util = require "lproc.util"

local FILE = P.tmp .. "/hostile.log"
local n = H.write(FILE)
local SRC = sys.realpath(FILE)

-- Global statement counters, read as root (the consumers' user cannot see other sessions').
local function com()
    local f = assert(io.popen(string.format(
        "mariadb --defaults-file=%s -uroot -N -e \"SHOW GLOBAL STATUS WHERE Variable_name IN "
        .. "('Com_drop_table','Com_delete','Com_update','Com_truncate','Com_drop_db','Com_delete_multi',"
        .. "'Com_update_multi','Com_replace','Com_load')\"", T.env("LPROC_MYSQL_ROOT_CNF"))))
    local t = {}
    for line in f:lines() do
        local k, v = line:match("^(%S+)%s+(%d+)")
        if k then t[k] = tonumber(v) end
    end
    f:close()
    return t
end

local by_name = {}
for _, c in ipairs(H.lines) do by_name[c[1]] = c[2] end
local function id_of(name)
    for i, lo in ipairs(P.lines(FILE)) do
        if H.lines[i][1] == name then return util.lineid(SRC, lo[2], lo[1]) end
    end
end

T.test("the corpus has at least 40 hostile lines and reads back as written", function()
    T.ok(n >= 40, "corpus size " .. n)
    local got = P.lines(FILE)
    T.eq(#got, n)
    for i, lo in ipairs(got) do
        T.ok(lo[1] == H.lines[i][2], "line " .. i .. " (" .. H.lines[i][1] .. ") reads back intact")
    end
end)

T.test("every hostile line: raw bytes intact, one clean row or one reject, nothing else runs", function()
    P.reset()
    local before = com()
    local rc, out = P.run("scripts/producer.lua --progress 0 " .. FILE, "producer")
    T.eq(rc, 0, "producer: " .. out)
    local lake = P.spawn("scripts/lake.lua --idle-exit 2", "lake")
    local clean = P.spawn("scripts/clean.lua --idle-exit 2", "clean")
    T.eq(P.wait(lake, 120), 0, "lake: " .. P.output(lake))
    T.eq(P.wait(clean, 120), 0, "clean: " .. P.output(clean))
    T.eq(P.check_exact({ { path = FILE, source = SRC } }), nil)
    -- The consumers write their batches with LOAD DATA LOCAL (served from memory): those
    -- statements ran, and nothing else that changes or removes data.
    local after = com()
    T.ok(after.Com_load > before.Com_load, "the batches went through LOAD DATA LOCAL")
    after.Com_load, before.Com_load = nil, nil
    T.eq(after, before, "no DROP, DELETE, UPDATE, TRUNCATE or REPLACE ran")
    for _, p in ipairs({ lake, clean }) do
        T.eq(P.output(p):find("\27", 1, true), nil, p.name .. " wrote no escape byte to the terminal")
    end
end)

T.test("injection strings are stored as data", function()
    local row = P.db():query_one("SELECT user FROM clean_log WHERE id = ?", id_of("SQL injection in the user, without spaces"))
    T.eq(row and row.user, "admin'--\\';DROP/**/TABLE/**/raw_log;#")
    row = P.db():query_one("SELECT url FROM clean_log WHERE id = ?", id_of("SQL injection in the path"))
    T.eq(row and row.url, "/'; DROP TABLE raw_log; --")
    row = P.db():query_one("SELECT referrer FROM clean_log WHERE id = ?", id_of("SQL injection in the referrer"))
    T.eq(row and row.referrer, "'; DROP TABLE raw_log; --")
    row = P.db():query_one("SELECT line FROM raw_log WHERE id = ?", id_of("SQL injection as the whole line"))
    T.eq(row and row.line, "'; DROP TABLE raw_log; --")
    T.eq(P.count("SELECT COUNT(*) FROM raw_log"), n, "raw_log still there and complete")
end)

T.test("lines over the maximum are counted as rejects, and stored raw", function()
    for _, name in ipairs({ "a 1 MB line", "a line over the rules' maximum (70000 bytes of junk)" }) do
        local id = id_of(name)
        local r = P.db():query_one("SELECT reason FROM clean_log_reject WHERE id = ?", id)
        T.ok(r and r.reason:find("too long", 1, true), name .. ": reject reason " .. T.show(r and r.reason))
        local raw = P.db():query_one("SELECT line FROM raw_log WHERE id = ?", id)
        T.ok(raw and raw.line == by_name[name], name .. ": raw bytes intact")
    end
end)

T.test("a good line among them is clean; junk is rejected with a reason", function()
    T.ok(P.db():query_one("SELECT id FROM clean_log WHERE id = ?", id_of("a good line")), "good line is clean")
    for _, name in ipairs({ "binary junk", "NUL bytes only", "raw TLS ClientHello bytes", "only spaces" }) do
        local r = P.db():query_one("SELECT reason FROM clean_log_reject WHERE id = ?", id_of(name))
        T.ok(r and #r.reason > 0, name .. " is a reject with a reason")
    end
end)

T.test("dry-run output never carries a raw control byte", function()
    local rc, out = P.run("scripts/clean.lua --dry-run " .. FILE, "dryrun")
    T.eq(rc, 0, "dry-run status")
    local lines = 0
    for l in out:gmatch("[^\n]+") do
        lines = lines + 1
        T.eq(l:find("[%z\1-\31\127]"), nil, "JSON line " .. lines .. " has no control byte")
    end
    T.eq(lines, n)
end)

-- Messages from other clients, with every shape of properties and headers the consumers may
-- meet (seeded; the seed is in the test's name). Whatever they hold, the consumers keep
-- running, every message becomes rows (one line, or the records of a batch body plus its
-- malformed tail), and each of those lines is in raw_log and in exactly one clean table.
local SEED = tonumber(os.getenv("LPROC_TEST_SEED") or "") or os.time() % 100000
T.test("hostile messages from another client, seed " .. SEED .. ": the consumers stay up, every line is stored", function()
    local amqp = require "lproc.amqp"
    local reader = require "lproc.reader"
    local BATCH = "application/vnd.lproc.lines+v1"
    local rnd = math.random
    math.randomseed(SEED)
    local good = by_name["a good line"]
    local function pick(t) return t[rnd(#t)] end
    local function junk(n)
        local b = {}
        for k = 1, n do b[k] = string.char(rnd(0, 255)) end
        return table.concat(b)
    end
    local sources = { function() return "s" end, function() return string.rep("/x", 1100) end,
        function() return 12 end, function() return true end, function() return { "a" } end,
        function() return junk(20) end }
    local offsets = { 0, 7, -1, 1.5, 2 ^ 70, "12", true, math.maxinteger }
    P.reset()
    local c = assert(amqp.connect(T.env("LPROC_TEST_AMQP_URL")))
    assert(require("lproc.broker").declare(c, "all", {}))
    local want = 0
    for i = 1, 300 do
        local mark = " m" .. i
        local body = pick({
            function() return "" .. mark end,
            function() return good .. mark end,
            function() return junk(rnd(0, 300)) .. mark end,
            function() return "\0\0" .. mark .. "\0" end,
            function() return string.rep("y", 70000) .. mark end,
            function()   -- a batch body, well formed or not
                local r = {}
                for j = 1, rnd(0, 5) do r[#r + 1] = string.format("%d %s r%d", rnd(0, 1e6), good, j) .. mark end
                if rnd(2) == 1 then r[#r + 1] = pick({ "x.5 bad", "-3 neg", "", "9", "12\r" }) .. mark end
                return table.concat(r, "\n") .. pick({ "", "\n" })
            end,
        })()
        local headers
        if rnd(4) > 1 then
            headers = {}
            if rnd(3) > 1 then headers["x-source"] = pick(sources)() end
            if rnd(3) > 1 then headers["x-offset"] = pick(offsets) end
            if rnd(6) == 1 then headers["x-truncated"] = pick({ true, "yes", 1 }) end
            if rnd(6) == 1 then headers["x-lines"] = pick({ 3, "three" }) end
        end
        local function maybe(v) if v ~= false then return v end end   -- false: no such property
        local props = {
            content_type = maybe(pick({ BATCH, BATCH, "text/plain", "application/json", false })),
            -- (ids differ between messages: one id is one row, by design)
            message_id = maybe(pick({ false, "id-" .. i, util.lineid("hostile", i, "x"), ("%064d"):format(i),
                "\0" .. i, ("Z"):rep(250) .. i })),
            headers = headers,
        }
        -- An empty batch body has no mark; without a message id, two of them taken as single
        -- lines are the same line (id = SHA-256 of the body), rightly one row.
        if not body:find(mark, 1, true) then props.message_id = props.message_id or "id-" .. i end
        assert(c:publish("logs", "logs", body, props))
        -- What the consumers must make of it: the records of a batch body, and what follows
        -- them as one more line; any other message is one line.
        if props.content_type == BATCH and headers and type(headers["x-source"]) == "string" then
            local pos = 1
            for nxt in reader.records(body) do want, pos = want + 1, nxt end
            if pos <= #body then want = want + 1 end
        else
            want = want + 1
        end
    end
    c:close()
    local lake = P.spawn("scripts/lake.lua --progress 0 --idle-exit 3", "lake")
    local clean = P.spawn("scripts/clean.lua --progress 0 --idle-exit 3", "clean")
    T.eq(P.wait(lake, 120), 0, "lake: " .. P.output(lake))
    T.eq(P.wait(clean, 120), 0, "clean: " .. P.output(clean))
    local got = P.counts()
    T.eq({ got.raw, got.clean + got.reject, got.both }, { want, want, 0 }, "rows" .. P.waiting())
    T.ok(P.waiting():find("lake 0, clean 0", 1, true), "queues drained" .. P.waiting())
end)

T.done()
