-- golden_test.lua: the cleaning rules on tests/cases/NAME.log against tests/cases/NAME.jsonl,
-- one JSON object per input line, exactly as the dry-run prints them.
--
-- The rules are those of scripts/clean.lua (combined, then proxy), with GeoIP from the test
-- database (tests/mkmmdb.pl) then the built-in country database, plus what
-- tests/cases/NAME.rules.lua adds when it exists (it returns a function(R)). Ids follow the
-- pipeline's formula with the source name "tests/cases/NAME.log".
--
-- LPROC_GOLDEN_UPDATE=1 rewrites the .jsonl files: review every changed line before committing.
local ROOT = os.getenv("LPROC_ROOT") or "."
package.path = ROOT .. "/scripts/lib/?.lua;" .. package.path
local T = require "testing"
local rules = require "lproc.rules"
local reader = require "lproc.reader"
local sha256 = require "lproc.sha256"

local TEST_DB = T.env("LPROC_TEST_MMDB")
local TMP = T.env("LPROC_TEST_TMP")
local COUNTRY_DB = ROOT .. "/build/country.mmdb"
local CASES = ROOT .. "/tests/cases/"

local function exists(path)
    local f = io.open(path)
    if f then f:close() end
    return f ~= nil
end

local function build(name)
    assert(exists(COUNTRY_DB), COUNTRY_DB .. " is missing: run make")
    local R = rules.new{ geoip = { TEST_DB, COUNTRY_DB } }
    R:format "combined"
    R:format "proxy"
    local extra = CASES .. name .. ".rules.lua"
    if exists(extra) then   -- chunk named by its path in the repository: errors say tests/cases/...
        local f = assert(io.open(extra))
        assert(load(f:read("a"), "@tests/cases/" .. name .. ".rules.lua"))()(R)
        f:close()
    end
    return R:compile()
end

local function lineid(source, offset, line)
    return sha256.hex(source, "\0", offset, "\0", line)
end

-- The JSON lines of the rules on a file read through lproc.reader.
local function run(R, path, source)
    local r = assert(reader.open(path))
    local out = {}
    for line, off in r:lines() do out[#out + 1] = R:json(line, lineid(source, off, line)) end
    r:close()
    return out
end

local function read_lines(path)
    local t = {}
    for l in io.lines(path) do t[#t + 1] = l end
    return t
end

local names = {}
for f in io.popen("ls " .. CASES):lines() do
    local n = f:match("^(.+)%.log$")
    if n then names[#names + 1] = n end
end
table.sort(names)

T.test("there are golden cases", function()
    T.eq(names, { "combined", "edge", "proxy", "site" })
end)

for _, name in ipairs(names) do
    T.test("golden " .. name, function()
        local got = run(build(name), CASES .. name .. ".log", "tests/cases/" .. name .. ".log")
        local expected = CASES .. name .. ".jsonl"
        if os.getenv("LPROC_GOLDEN_UPDATE") then
            local f = assert(io.open(expected, "w"))
            f:write(table.concat(got, "\n"), "\n")
            f:close()
        end
        local want = read_lines(expected)
        for i = 1, math.max(#got, #want) do T.eq(got[i], want[i], name .. ".jsonl line " .. i) end
    end)
end

T.test("a 1 MB line is a reject, the whole line kept", function()
    local R = build("combined")
    local line = '1.2.3.4 - - [01/Nov/2022:00:00:00 -0500] "GET /' .. string.rep("x", 1 << 20) .. ' HTTP/1.1" 200 1 "-" "-"'
    local id = lineid("big", 0, line)
    local reason = "line too long (" .. #line .. " bytes, max 65536)"
    T.eq(#line, 1048647)
    T.eq(table.pack(R:process(line, id)), { n = 2, false, reason })
    T.eq(R:json(line, id), '{"_table":"clean_log_reject","id":"' .. id .. '","reason":"' .. reason
        .. '","line":"' .. line:gsub('"', '\\"') .. '"}')
    local big = rules.new{ max_line = 2 << 20 }
    big:format "combined"
    big:compile()
    local r = table.pack(big:process(line, id))
    T.eq({ r[1], r[17], r[18], #r[22], r[23] }, { true, "GET", "/" .. string.rep("x", 1 << 20), (1 << 20) + 1, nil })
end)

T.test("CRLF and LF files give the same rows", function()
    local R = build("combined")
    local lf = TMP .. "/lf.log"
    local crlf = TMP .. "/crlf.log"
    local lines = read_lines(CASES .. "combined.log")
    local f = assert(io.open(lf, "wb"))
    f:write(table.concat(lines, "\n"), "\n")
    f:close()
    f = assert(io.open(crlf, "wb"))
    f:write(table.concat(lines, "\r\n"), "\r\n")
    f:close()
    local function noid(t)
        for i, j in ipairs(t) do t[i] = j:gsub('"id":"%x+"', "") end
        return t
    end
    T.eq(noid(run(R, crlf, "x")), noid(run(R, lf, "x")))
    T.eq(R:json(lines[1] .. "\r", "i"), R:json(lines[1], "i"), "a stray CR at the end of a line is ignored")
end)

T.test("the dry-run of scripts/clean.lua prints the same objects", function()
    local lproc = os.getenv("LPROC") or "./lproc"
    for _, name in ipairs({ "combined", "proxy", "edge" }) do
        local src = "tests/cases/" .. name .. ".log"
        local p = assert(io.popen(string.format("cd '%s' && LPROC_GEOIP_DB='%s:%s' %s scripts/clean.lua --dry-run %s --source %s 2>&1",
            ROOT, TEST_DB, COUNTRY_DB, lproc, src, src)))
        local out = p:read("a")
        T.ok(p:close(), "dry-run exit status: " .. out:sub(1, 300))
        local f = assert(io.open(CASES .. name .. ".jsonl", "rb"))
        T.eq(out, f:read("a"), name)
        f:close()
    end
end)

T.done()
