-- clean_sql_test.lua: sql/schema.sql on the real MariaDB, and every value R:process gives
-- for the golden lines (plus oversized and junk values) accepted by it in strict mode and read
-- back unchanged. Uses the mariadb client with the test server's root configuration, in a
-- database of its own.
local ROOT = os.getenv("LPROC_ROOT") or "."
package.path = ROOT .. "/scripts/lib/?.lua;" .. package.path
local T = require "testing"
local rules = require "lproc.rules"
local reader = require "lproc.reader"
local sha256 = require "lproc.sha256"

local CNF = T.env("LPROC_MYSQL_ROOT_CNF")
local TMP = T.env("LPROC_TEST_TMP")
local TEST_DB = T.env("LPROC_TEST_MMDB")
local DB = "logfmt_sql_test"

-- Runs SQL text through the client; returns its output lines (tab-separated, raw) or raises.
local function sql(text, db)
    local path = TMP .. "/logfmt.sql"
    local f = assert(io.open(path, "wb"))
    f:write(text)
    f:close()
    local p = assert(io.popen(string.format("mariadb --defaults-file='%s' -uroot --default-character-set=utf8mb4 -N -B --raw %s < '%s' 2>&1",
        CNF, db or "", path)))
    local out = p:read("a")
    local ok = p:close()
    if not ok then error("mariadb failed: " .. out:sub(1, 2000)) end
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    return lines
end

local function hex(s)
    return (s:gsub(".", function(c) return string.format("%02X", c:byte()) end))
end

-- A Lua value of R:process as an SQL literal.
local function literal(v, dec)
    if v == nil then return "NULL" end
    if v == true then return "TRUE" end
    if v == false then return "FALSE" end
    if math.type(v) == "integer" or dec then return tostring(v) end
    return "_utf8mb4 X'" .. hex(v) .. "'"
end

local function build(max_line)
    local R = rules.new{ geoip = { TEST_DB }, max_line = max_line }
    R:format "combined"
    R:format "proxy"
    return R:compile()
end

T.test("sql/schema.sql creates the tables, twice without harm", function()
    sql("DROP DATABASE IF EXISTS " .. DB .. "; CREATE DATABASE " .. DB .. " CHARACTER SET utf8mb4;")
    local f = assert(io.open(ROOT .. "/sql/schema.sql"))
    local ddl = f:read("a")
    f:close()
    sql(ddl, DB)
    sql(ddl, DB)
    local names = sql("SELECT column_name FROM information_schema.columns WHERE table_schema = '" .. DB
        .. "' AND table_name = 'clean_log' ORDER BY ordinal_position")
    local want = { "seq" }
    for _, c in ipairs(build():columns()) do want[#want + 1] = c.name end
    want[#want + 1] = "ingested_at"
    T.eq(names, want)
end)

T.test("every value of the golden lines is stored as given (strict mode)", function()
    local R = build(256 * 1024)
    local cols = R:columns()
    local dec = {}
    for i, c in ipairs(cols) do dec[i] = c.type:find("^DECIMAL") ~= nil end
    local lines = {}
    for _, name in ipairs({ "combined", "proxy", "edge", "site" }) do
        local r = assert(reader.open(ROOT .. "/tests/cases/" .. name .. ".log"))
        for line in r:lines() do lines[#lines + 1] = line end
        r:close()
    end
    -- oversized values: cut to their columns; junk bytes become U+FFFD (3 bytes each)
    lines[#lines + 1] = '1.2.3.4 - ' .. string.rep("é", 300) .. ' [01/Nov/2022:00:00:00 +0000] "'
        .. string.rep("M", 40) .. ' /' .. string.rep("p", 70000) .. ' HTTP/1.1" 200 1 "-" "'
        .. string.rep("\255", 100000) .. '"'
    local inserts, rows, rejects = {}, {}, 0
    local names = {}
    for i, c in ipairs(cols) do names[i] = "`" .. c.name .. "`" end
    for i, line in ipairs(lines) do
        local id = sha256.hex("sql", "\0", i, "\0", line)
        local r = table.pack(R:process(line, id))
        if r[1] then
            local vals = {}
            for k = 1, #cols do vals[k] = literal(r[k + 1], dec[k]) end
            inserts[#inserts + 1] = "INSERT INTO clean_log (" .. table.concat(names, ",") .. ") VALUES ("
                .. table.concat(vals, ",") .. ");"
            rows[id] = r
        else
            rejects = rejects + 1
            inserts[#inserts + 1] = string.format("INSERT INTO clean_log_reject (id, reason, line) VALUES "
                .. "('%s', _utf8mb4 X'%s', X'%s');", id, hex(r[2]), hex(line))
        end
    end
    sql("SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ZERO_DATE';\n" .. table.concat(inserts, "\n"), DB)
    T.eq(sql("SELECT COUNT(*) FROM clean_log_reject", DB), { tostring(rejects) })
    local n = 0
    for _ in pairs(rows) do n = n + 1 end
    T.eq(sql("SELECT COUNT(*) FROM clean_log", DB), { tostring(n) })
    local out = sql("SELECT " .. table.concat(names, ",") .. " FROM clean_log", DB)
    T.eq(#out, n)
    for _, l in ipairs(out) do
        local got = {}
        for v in (l .. "\t"):gmatch("([^\t]*)\t") do got[#got + 1] = v end
        local r = rows[got[1]]
        for k, c in ipairs(cols) do
            local v, d = r[k + 1], got[k]
            if v == nil then v = "NULL"
            elseif v == true then v = "1"
            elseif v == false then v = "0"
            elseif dec[k] and d:find("%.") then d = d:gsub("0+$", ""):gsub("%.$", "")
            end
            T.eq(d, tostring(v), c.name .. " of " .. got[1])
        end
    end
    local long = sql("SELECT CHAR_LENGTH(user), CHAR_LENGTH(rest_method), LENGTH(url), LENGTH(user_agent) "
        .. "FROM clean_log WHERE rest_method LIKE 'MMM%'", DB)
    T.eq(long, { "255\t32\t70001\t300000" })
end)

T.test("cleanup", function()
    sql("DROP DATABASE " .. DB)
end)

T.done()
