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

T.done()
