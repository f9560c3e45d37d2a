-- harness.lua: the Lua half of the fuzz harnesses (tests/fuzz/fuzz_*.c) and of
-- tests/unit/fuzz_regress_test.lua: the rules under test and the invariants every result must
-- keep. A broken invariant raises an error, which the C harness turns into a crash.
--
--   local H = dofile(ROOT .. "/tests/fuzz/harness.lua")
--   H.init(ROOT)                        -- package.path for scripts/lib
--   local R = H.default_rules()         -- scripts/clean.lua, loaded as the consumer loads it
--   local C = H.custom_rules()          -- a wide custom format, custom columns, a mapping function
--   H.check(R, line)                    -- R:process + R:json (twice), every invariant
--   H.format_case(input)                -- the format compiler and an engine on "format\nline"
--   H.url_case(input)                   -- engine:parse_url against whole $request lines
local M = {}

M.ID = string.rep("0123456789abcdef", 4)    -- the row id of every fuzzed line

local ROOT
local logfmt

local use_fast

function M.init(root)
    ROOT = root
    package.path = root .. "/scripts/lib/?.lua;" .. package.path
    logfmt = require "lproc.logfmt"
    local fast = rawget(_G, "FUZZ_FAST")
    if fast then use_fast(fast) end
    return M
end

-- ---------------------------------------------------------------------------------------------
-- The rules
-- ---------------------------------------------------------------------------------------------

-- scripts/clean.lua exactly as the consumer loads it (dofile; its main() hands the rules back),
-- compiled with the built-in country database.
function M.default_rules()
    local saved = package.loaded["lproc.clean"]
    package.loaded["lproc.clean"] = { main = function(R) return R end }
    local ok, R = pcall(dofile, ROOT .. "/scripts/clean.lua")
    package.loaded["lproc.clean"] = saved
    if not ok then error(R, 0) end
    R.geoip = { ROOT .. "/build/country.mmdb" }
    return R:compile()
end

-- A site format with nearly every known variable and custom fields feeding typed custom columns.
M.WIDE = table.concat({
    [[$remote_addr:$remote_port $proxy_session $remote_user [$time_iso8601] $msec ]],
    [["$request_method $request_uri $server_protocol" $status $bytes_sent $request_length ]],
    [[$request_time $gzip_ratio "$http_referer" "$http_user_agent" $host/$server_name/$http_host ]],
    [[$server_addr:$server_port c=$connection/$connection_requests pid=$pid $pipe ]],
    [[{$upstream_cache_status|$cost|$visit_date|$flag|$seen|$at|$ratio|$tag|$hits} ]],
    [[$request_id$trailer]],
})
-- Adjacent variables (lazy sub-patterns) and $time_local with another delimiter.
M.LOOSE = [[$remote_addr $upstream_addr$upstream_status <$time_local> $request]]
-- $msec as the only time.
M.MSEC = [[$msec $realip_remote_addr "$request" $status $body_bytes_sent ${http_user_agent}]]

M.CUSTOM_COLUMNS = {
    { "cache_status", "VARCHAR(16)" }, { "cost", "DECIMAL(8,3)" }, { "visit_date", "DATE" },
    { "flag", "BOOLEAN" }, { "seen", "DATETIME" }, { "at", "TIME" }, { "ratio", "DOUBLE" },
    { "tag", "CHAR(4)" }, { "hits", "BIGINT UNSIGNED" }, { "request_id", "VARCHAR(8)" },
    { "note", "TEXT" }, { "n", "SMALLINT UNSIGNED" }, { "score", "DOUBLE" },
    { "amount", "DECIMAL(20,5)" }, { "tiny", "TINYINT" }, { "label", "VARCHAR(3)" },
    { "short_note", "TINYTEXT" },
}

-- Every variable name of the formats.
local function variables_of(texts)
    local seen, out = {}, {}
    for _, text in ipairs(texts) do
        local f = logfmt.compile(text)
        for _, v in ipairs(f:variables()) do
            if not seen[v] then
                seen[v] = true
                out[#out + 1] = v
            end
        end
        f:close()
    end
    return out
end

-- The mapping function of the custom rules: reads every column and variable, then, steered by
-- the line's last byte, writes columns (good and bad values), rejects, or fails.
local function make_map(names)
    local function try(f, ...) return pcall(f, ...) end
    local function set(rec, k, v) rec[k] = v end
    return function(rec)
        local line = rec._line
        local fmt = rec._format
        assert(type(line) == "string" and type(fmt) == "string")
        for i = 1, #names do local _ = rec[names[i]] end
        local b = line:byte(-1) or 0
        local sel = (b + #line) % 16
        if sel == 0 then error("map failure at " .. line:sub(1, 40)) end
        if sel == 1 then return false, line:sub(-60) end
        if sel == 2 then return nil, "nil reject " .. fmt end
        if sel == 3 then error(setmetatable({}, { __tostring = function() return "obj" end })) end
        if sel == 4 then rec.note = line end
        if sel == 5 then rec.host = rec.user_agent end
        if sel == 6 then rec.url = nil; rec.path = line:sub(1, (b % 7) * 37) end
        if sel == 7 then return false end
        -- typed writes: each may be refused (raises), which must not disturb the line
        try(set, rec, "n", rec.status)
        try(set, rec, "score", tonumber(rec.ratio or "") or rec.request_time)
        try(set, rec, "amount", rec.size_kilo_bytes)
        try(set, rec, "amount", tonumber(line:match("[%d.eE+-]+") or ""))
        try(set, rec, "tiny", tonumber(line:match("%-?%d+") or ""))
        try(set, rec, "label", rec._format .. line:sub(1, 3))
        try(set, rec, "seen", line:sub(1, 19))
        try(set, rec, "visit_date", rec.timestamp and rec.timestamp:sub(1, 10))
        try(set, rec, "at", rec.time)
        try(set, rec, "flag", b % 2 == 0)
        try(set, rec, "cost", line:match("[%d.]+"))
        try(set, rec, "timestamp", line:sub(2, 20))
        try(set, rec, "size_kilo_bytes", (rec.size_bytes or 0) / 3)
        try(set, rec, "short_note", line)
        try(set, rec, "flag", rec.status)                       -- refused: not a boolean
        try(set, rec, "score", (rec.size_bytes or 0) / 0)       -- refused: not finite
        try(set, rec, "amount", 1e300 * (b - 100))              -- refused: out of range
        try(set, rec, "label", {})                              -- refused: not a value
        try(set, rec, "tiny", -(b % 128))
        try(set, rec, "hits", rec.hits and -1)                  -- refused: unsigned
        try(set, rec, "id", "x")
        try(set, rec, "nonexistent", 1)
        try(set, rec, "is_email", nil)
        try(function() return rec.nonexistent end)
        try(function() return rec[1] end)
        if sel == 8 then rec.country = line:sub(-5) end
        if sel == 9 then return true end
    end
end

-- The custom rules: the wide, loose and msec formats, then the presets; custom columns (most
-- named like a variable); the mapping function.
function M.custom_rules()
    local rules = require "lproc.rules"
    local R = rules.new{ geoip = { ROOT .. "/build/country.mmdb" }, max_line = 8192, ua_cache = 64,
                         geo_cache = 64 }
    R:format("wide", M.WIDE)
    R:format("loose", M.LOOSE)
    R:format("msec", M.MSEC)
    R:format "combined"
    R:format "proxy"
    for _, c in ipairs(M.CUSTOM_COLUMNS) do R:column(c[1], c[2]) end
    table.insert(R.user_agents.browser, 1, { "(?i)fuzz(er)?/[0-9]+", "Fuzzer" })
    table.insert(R.user_agents.os, 1, { "Plan9", "Plan 9" })
    local names = {}
    for _, c in ipairs(R:columns()) do names[#names + 1] = c.name end
    for _, v in ipairs(variables_of({ M.WIDE, M.LOOSE, M.MSEC, rules.presets.combined,
                                      rules.presets.proxy })) do
        names[#names + 1] = v
    end
    R.map = make_map(names)
    R._fuzz_custom = true
    return R:compile()
end

-- ---------------------------------------------------------------------------------------------
-- Invariants
-- ---------------------------------------------------------------------------------------------

local function fail(fmt, ...)
    error("fuzz invariant: " .. string.format(fmt, ...), 0)
end

local function q(s)
    s = tostring(s)
    if #s > 300 then s = s:sub(1, 300) .. "..." end
    return (string.format("%q", s):gsub("\n", "n"))
end

-- Is s valid UTF-8 (no surrogates, no overlong forms) without control characters (C0, DEL, C1)?
-- (The fuzz harnesses swap in a C version of this and of decode_json; see M.init.)
local clean_text
local function lua_clean_text(s)
    return utf8.len(s) ~= nil and not s:find("[%z\1-\31\127]") and not s:find("\194[\128-\159]")
end
clean_text = lua_clean_text
M.clean_text = function(s) return clean_text(s) end

-- Decodes the JSON object text s (flat: string, number, true, false, null members). Returns
-- keys (in order) and values (strings decoded; numbers as their text, tagged {num = text};
-- null as M.NULL). Raises on anything that is not valid JSON or not clean text.
M.NULL = setmetatable({}, { __tostring = function() return "null" end })
local SIMPLE = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r",
                 t = "\t" }
local decode_json
local function lua_decode_json(s)
    local i, n = 1, #s
    local keys, vals = {}, {}
    -- The whole text is clean (valid UTF-8, no raw control character), so pieces of it are.
    if not clean_text(s) then fail("JSON: raw control byte or bad UTF-8 in %s", q(s)) end
    local function str()
        local a, b, plain = s:find('^"([^"\\]*)"', i)
        if a then                                   -- no escape: the common case
            i = b + 1
            return plain
        end
        if s:sub(i, i) ~= '"' then fail("JSON: string expected at %d of %s", i, q(s)) end
        i = i + 1
        local parts = {}
        while true do
            a, b = s:find('^[^"\\]+', i)
            if a then
                parts[#parts + 1] = s:sub(a, b)
                i = b + 1
            end
            local c = s:sub(i, i)
            if c == '"' then
                i = i + 1
                return table.concat(parts)
            elseif c == "\\" then
                local e = s:sub(i + 1, i + 1)
                if SIMPLE[e] then
                    parts[#parts + 1] = SIMPLE[e]
                    i = i + 2
                elseif e == "u" and s:find("^%x%x%x%x", i + 2) then
                    local cp = tonumber(s:sub(i + 2, i + 5), 16)
                    if cp >= 0xD800 and cp <= 0xDFFF then fail("JSON: surrogate escape in %s", q(s)) end
                    parts[#parts + 1] = utf8.char(cp)
                    i = i + 6
                else
                    fail("JSON: bad escape at %d of %s", i, q(s))
                end
            else
                fail("JSON: unterminated string at %d of %s", i, q(s))
            end
        end
    end
    local function value()
        local c = s:byte(i)
        if c == 34 then return str() end            -- '"'
        if c == 110 and s:sub(i, i + 3) == "null" then i = i + 4; return M.NULL end
        if c == 116 and s:sub(i, i + 3) == "true" then i = i + 4; return true end
        if c == 102 and s:sub(i, i + 4) == "false" then i = i + 5; return false end
        local a, b = s:find("^%-?0", i)
        if not a then a, b = s:find("^%-?[1-9]%d*", i) end
        if not a then fail("JSON: value expected at %d of %s", i, q(s)) end
        i = b + 1
        local _, e = s:find("^%.%d+", i)
        if e then i = e + 1 end
        _, e = s:find("^[eE][+-]?%d+", i)
        if e then i = e + 1 end
        return { num = s:sub(a, i - 1) }
    end
    if s:sub(1, 1) ~= "{" then fail("JSON: not an object: %s", q(s)) end
    i = 2
    while true do
        local k = str()
        if s:byte(i) ~= 58 then fail("JSON: ':' expected at %d of %s", i, q(s)) end   -- ':'
        i = i + 1
        keys[#keys + 1] = k
        vals[#vals + 1] = value()
        local c = s:byte(i)
        i = i + 1
        if c == 125 then break end                  -- '}'
        if c ~= 44 then fail("JSON: ',' or '}' expected at %d of %s", i - 1, q(s)) end
    end
    if i ~= n + 1 then fail("JSON: trailing bytes after the object: %s", q(s)) end
    return keys, vals
end
decode_json = lua_decode_json
M.decode_json = function(s) return decode_json(s) end

-- The C versions from the harness (FUZZ_FAST), once they agree with the Lua ones on samples;
-- a C version refusing something leaves the message to the Lua one.
function use_fast(fast)
    local texts = { "", "abc", "\0", "\31", "\127", "\194\128", "\194\159", "\194\160", "\195\169",
        "\224\159\191", "\224\160\128", "\237\159\191", "\237\160\128", "\239\191\189",
        "\240\143\191\191", "\240\144\128\128", "\244\143\191\191", "\244\144\128\128", "\192\175",
        "\193\191", "\245\128\128\128", "\255", "\128", "a\226\130", "\226\130\172" }
    for _, t in ipairs(texts) do
        assert(fast.clean_text(t) == lua_clean_text(t), "FUZZ_FAST.clean_text differs on " .. q(t))
    end
    local jsons = { '{"a":1,"b":"x\\u00e9\\n\\"","c":null,"d":true,"e":-0.5e+3,"f":false,"g":0,"h":-12}',
        '{"a":"\1"}', '{"a":"\255"}', '{"a":"\\x22"}', '{"a":"\\ud800"}', '{"a":01}', '{"a":1}x',
        '{"a":nan}', '{"a":"}', '{"a":1,}', '{}', '', '{"a" :1}', '{"a":-}', '{"a":1.}', '{"a":"\\u00"}',
        '{"a":"\\/\\b\\f\\r\\t"}', '{"a":1e}', '{"\194\133":1}' }
    for _, j in ipairs(jsons) do
        local ok, k1, v1 = pcall(lua_decode_json, j)
        local k2, v2 = fast.decode_json(j, M.NULL)
        if not ok then k1, v1 = nil, nil end
        local same = (k1 == nil) == (k2 == nil)
        if same and k1 then
            same = #k1 == #k2 and #v1 == #v2
            for i = 1, #k1 do
                local a, b = v1[i], v2[i]
                same = same and k1[i] == k2[i]
                    and (a == b or type(a) == "table" and type(b) == "table" and a.num == b.num)
            end
        end
        assert(same, "FUZZ_FAST.decode_json differs on " .. q(j))
    end
    clean_text = fast.clean_text
    decode_json = function(j)
        local k, v = fast.decode_json(j, M.NULL)
        if k then return k, v end
        lua_decode_json(j)              -- raises with the message
        error("FUZZ_FAST.decode_json refused " .. q(j) .. " but the Lua version accepts it")
    end
end

-- What each column may hold, from its SQL type.
local function column_spec(c)
    local t = c.type:upper()
    local spec = { name = c.name, null = c.null }
    local len = t:match("^V?A?R?CHAR%((%d+)%)$")
    if len then
        spec.kind, spec.chars = "str", tonumber(len)
    elseif t:match("TEXT$") then
        spec.kind, spec.chars = "str", math.huge
    elseif t == "BOOLEAN" or t == "BOOL" then
        spec.kind = "bool"
    elseif t:match("INT") then
        local bits = ({ TINYINT = 8, SMALLINT = 16, MEDIUMINT = 24, INT = 32, BIGINT = 64 })[t:match("^%a+")]
        spec.kind = "int"
        if t:match("UNSIGNED") then
            spec.lo, spec.hi = 0, bits == 64 and math.maxinteger or (1 << bits) - 1
        else
            spec.lo, spec.hi = bits == 64 and math.mininteger or -(1 << (bits - 1)),
                bits == 64 and math.maxinteger or (1 << (bits - 1)) - 1
        end
    elseif t:match("^DECIMAL") then
        local p, s = t:match("^DECIMAL%((%d+),(%d+)%)$")
        spec.kind, spec.prec, spec.scale = "dec", tonumber(p), tonumber(s)
    elseif t == "DOUBLE" then
        spec.kind = "dbl"
    elseif t == "DATETIME" then
        spec.kind, spec.shape = "time", "^%d%d%d%d%-%d%d%-%d%d %d%d:%d%d:%d%d$"
    elseif t == "DATE" then
        spec.kind, spec.shape = "time", "^%d%d%d%d%-%d%d%-%d%d$"
    elseif t == "TIME" then
        spec.kind, spec.shape = "time", "^%d%d:%d%d:%d%d$"
    else
        error("harness: no spec for SQL type " .. c.type)
    end
    return spec
end

-- The specs of R's columns, cached on R.
local function specs_of(R)
    local s = rawget(R, "_fuzz_specs")
    if not s then
        s = {}
        for i, c in ipairs(R:columns()) do s[i] = column_spec(c) end
        rawset(R, "_fuzz_specs", s)
    end
    return s
end

-- Checks one value v of column spec sp (as R:process returns it).
local function check_value(sp, v)
    if v == nil then
        if not sp.null then fail("column %s: NULL in a NOT NULL column", sp.name) end
        return
    end
    if sp.kind == "str" then
        if type(v) ~= "string" then fail("column %s: %s, want a string", sp.name, type(v)) end
        if not clean_text(v) then fail("column %s: not clean UTF-8: %s", sp.name, q(v)) end
        if utf8.len(v) > sp.chars then fail("column %s: %d characters, max %d", sp.name, utf8.len(v), sp.chars) end
    elseif sp.kind == "int" then
        if math.type(v) ~= "integer" or v < sp.lo or v > sp.hi then
            fail("column %s: %s out of its integer range", sp.name, q(v))
        end
    elseif sp.kind == "bool" then
        if type(v) ~= "boolean" then fail("column %s: %s, want a boolean", sp.name, q(v)) end
    elseif sp.kind == "dec" then
        local ip, fp = tostring(v):match("^%-?(%d+)%.?(%d*)$")
        if type(v) ~= "string" or not ip or (ip:match("^0.") ~= nil) or #fp > sp.scale
            or (ip ~= "0" and #ip > sp.prec - sp.scale) or fp:match("0$") or v == "-0" then
            fail("column %s: %s is not a normalised DECIMAL(%d,%d)", sp.name, q(v), sp.prec, sp.scale)
        end
    elseif sp.kind == "dbl" then
        if math.type(v) ~= "float" or v ~= v or v - v ~= 0 then
            fail("column %s: %s, want a finite float", sp.name, q(v))
        end
    elseif sp.kind == "time" then
        if type(v) ~= "string" or not v:match(sp.shape) then fail("column %s: %s", sp.name, q(v)) end
    end
end

-- Standard-column relations worth a check.
local function check_row(R, specs, row)
    local by = {}
    for i, sp in ipairs(specs) do by[sp.name] = row[i] end
    local custom = rawget(R, "_fuzz_custom")     -- its mapping function writes host and time
    if by.host and by.host:find("[A-Z]") and not custom then fail("host %s is not lower-case", q(by.host)) end
    if by.port and by.port > 65535 then fail("port %s", by.port) end
    if by.year and (by.year < 1000 or by.year > 9999) then fail("year %s", by.year) end
    if by.month and (by.month < 1 or by.month > 12) then fail("month %s", by.month) end
    if by.day and (by.day < 1 or by.day > 31) then fail("day %s", by.day) end
    if (by.timestamp == nil) ~= (by.year == nil) and not custom then
        fail("timestamp %s but year %s", q(by.timestamp), q(by.year))
    end
    if by.status and by.status > 999 then fail("status %s", by.status) end
    if by.size_bytes and by.size_bytes < 0 then fail("size_bytes %s", by.size_bytes) end
    if by.is_email and (not by.email_domain or not by.user or not by.user:find("@", 1, true)) then
        fail("is_email with user %s, email_domain %s", q(by.user), q(by.email_domain))
    end
    if custom then return end
    if by.size_bytes and (tonumber(by.size_kilo_bytes) ~= by.size_bytes / 1024
                          or tonumber(by.size_mega_bytes) ~= by.size_bytes / 1048576) then
        fail("size %s: %s KiB, %s MiB", by.size_bytes, q(by.size_kilo_bytes), q(by.size_mega_bytes))
    end
    if by.timestamp then
        local y, m, d, time = by.timestamp:match("^(%d+)%-(%d+)%-(%d+) (.*)$")
        y, m, d = tonumber(y), tonumber(m), tonumber(d)
        if y ~= by.year or m ~= by.month or d ~= by.day or time ~= by.time then
            fail("timestamp %s vs %s-%s-%s %s", by.timestamp, by.year, by.month, by.day, by.time)
        end
        -- day of the week (Sakamoto's method)
        local t = { 0, 3, 2, 5, 0, 3, 5, 1, 4, 6, 2, 4 }
        local yy = m < 3 and y - 1 or y
        local w = (yy + yy // 4 - yy // 100 + yy // 400 + t[m] + d) % 7
        local names = { [0] = "Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday" }
        if by.day_of_week ~= names[w] then fail("%s is a %s, not a %s", by.timestamp, names[w], by.day_of_week) end
    end
end

-- Runs line through R:process and R:json (twice: the caches must not change the answer) and
-- checks every invariant: the shape of the result, clean text, column types and sizes, JSON
-- validity, and that the JSON says exactly what process said.
function M.check(R, line, id)
    id = id or M.ID
    local specs = specs_of(R)
    local r = table.pack(R:process(line, id))
    if r[1] == true then
        if r.n ~= #specs + 1 then fail("process: %d values for %d columns", r.n - 1, #specs) end
        if r[2] ~= id then fail("process: id %s", q(r[2])) end
        local row = {}
        for i, sp in ipairs(specs) do
            row[i] = r[i + 1]
            check_value(sp, row[i])
        end
        check_row(R, specs, row)
    elseif r[1] == false then
        if r.n ~= 2 or type(r[2]) ~= "string" or r[2] == "" then
            fail("process: a reject without a reason string (%d values)", r.n)
        end
        if not clean_text(r[2]) or utf8.len(r[2]) > 1024 then fail("process: reason %s", q(r[2])) end
    else
        fail("process returned %s", q(r[1]))
    end

    local j = R:json(line, id)
    if type(j) ~= "string" then fail("json returned a %s", type(j)) end
    local j2 = R:json(line, id)
    if j2 ~= j then fail("json differs on the second call:\n%s\n%s", q(j), q(j2)) end
    local keys, vals = decode_json(j)
    if r[1] then
        if vals[1] ~= "clean_log" or #keys ~= #specs + 1 then fail("json: not a clean_log row: %s", q(j)) end
        for i, sp in ipairs(specs) do
            local k, jv, pv = keys[i + 1], vals[i + 1], r[i + 1]
            if k ~= sp.name then fail("json: key %s where %s was expected", q(k), sp.name) end
            local same
            if pv == nil then
                same = jv == M.NULL
            elseif type(jv) == "table" and jv.num then
                same = (sp.kind == "dec" and jv.num == pv) or (sp.kind == "int" and jv.num == tostring(pv))
                    or (sp.kind == "dbl" and tonumber(jv.num) == pv)
            else
                same = jv == pv
            end
            if not same then fail("json: %s is %s, process said %s", sp.name, q(jv.num or jv), q(pv)) end
        end
    else
        if vals[1] ~= "clean_log_reject" or #keys ~= 4 or keys[2] ~= "id" or keys[3] ~= "reason"
            or keys[4] ~= "line" then
            fail("json: not a reject: %s", q(j))
        end
        if vals[3] ~= r[2] then fail("json: reason %s, process said %s", q(vals[3]), q(r[2])) end
        if utf8.len(line) and vals[4] ~= line then fail("json: the line changed: %s", q(vals[4])) end
        if utf8.len(id) and vals[2] ~= id then fail("json: the id changed: %s", q(vals[2])) end
    end
    return r[1]
end

-- ---------------------------------------------------------------------------------------------
-- The format compiler
-- ---------------------------------------------------------------------------------------------

local TYPES = { "TEXT", "INT", "DECIMAL(10,2)", "DATETIME", "BOOLEAN", "DOUBLE", "VARCHAR(3)",
                "DATE", "TIME", "BIGINT UNSIGNED", "TINYINT" }
-- (literal rules only: an engine is built per input, and regex rules cost a JIT compile each)
local SMALL_UA = {
    browser = { { "Firefox/", "Firefox" }, { "Chrome/", "Chrome" } },
    os = { { "Linux", "Linux" } },
    device = { { "Mobile", "mobile" } },
    default_device = "desktop",
}

-- input = FORMAT [ "\n" LINE ]: compiles FORMAT (an error must be a clean "logfmt.compile: ..."
-- message); when it compiles, matches LINE (default: FORMAT itself) with format:match, then runs
-- an engine of that one format, with a typed custom column per variable that can be one, through
-- check().
function M.format_case(input)
    local nl = input:find("\n", 1, true)
    local fmt = nl and input:sub(1, nl - 1) or input
    local line = nl and input:sub(nl + 1) or input
    local ok, f = pcall(logfmt.compile, fmt)
    if not ok then
        -- every literal byte is escaped: the generated pattern must always compile
        if type(f) ~= "string" or not f:find("^logfmt%.compile: ") or f:find("^logfmt%.compile: pcre2") then
            fail("compile error %s for %s", q(f), q(fmt))
        end
        return false
    end
    local vars = f:variables()
    if #vars > 64 then fail("%d variables", #vars) end
    local pat = f:pattern()
    if type(pat) ~= "string" then fail("pattern") end
    -- Adjacent variables give lazy groups: with more than two, one line can cost the engine's
    -- whole match budget (a format is the site's, not a stranger's), so no line is run.
    local _, lazy = pat:gsub("%(%.%*%?%)", "")
    if lazy > 2 then line = "" end
    local mok, m = pcall(f.match, f, line)
    if mok then
        if m ~= nil then
            for k, v in pairs(m) do
                if type(k) ~= "string" or type(v) ~= "string" then fail("match: %s = %s", q(k), q(v)) end
            end
        end
    elseif not tostring(m):find("^logfmt%.match: pcre2 error %-?%d+$") then
        fail("match raised %s", q(m))
    end
    f:close()

    local std = {}
    for _, c in ipairs(logfmt.columns()) do std[c.name] = true end
    local cols, seen = {}, {}
    for _, v in ipairs(vars) do
        if not seen[v] and not std[v] and #v <= 64 and v:match("^[a-z][a-z0-9_]*$") then
            seen[v] = true
            cols[#cols + 1] = { name = v, type = TYPES[#v % #TYPES + 1] }
        end
    end
    local rules = { _formats = { { name = "fuzzed", format = fmt } }, _columns = cols }
    local eok, e = pcall(logfmt.engine, {
        formats = rules._formats, columns = cols, ua = SMALL_UA, max_line = 8192,
        map = function(rec)
            for _, v in ipairs(vars) do local _ = rec[v] end
            if #line % 5 == 0 then rec.url = rec._line end
        end,
    })
    if not eok then fail("engine refused a compiled format: %s", q(e)) end
    local R = setmetatable({
        process = e:bind("process"), json = e:bind("json"),
        columns = function()
            local t = logfmt.columns()
            for _, c in ipairs(cols) do t[#t + 1] = { name = c.name, type = c.type, null = true } end
            return t
        end,
    }, {})
    M.check(R, line)
    e:close()
    return true
end

-- ---------------------------------------------------------------------------------------------
-- URL parsing
-- ---------------------------------------------------------------------------------------------

local url_engine

local URL_SPECS
local PARTS = { "schema", "host", "port", "path", "query", "rest_session" }

-- input: a request target. parse_url (plain and CONNECT) must give clean values within their
-- columns, and exactly what a whole "GET|CONNECT <input> HTTP/1.1" line gives.
function M.url_case(input)
    if not url_engine then
        url_engine = logfmt.engine{ formats = { { name = "request", format = "$request" } } }
        URL_SPECS = {}
        local idx = {}
        for i, c in ipairs(logfmt.columns()) do idx[c.name] = i end
        M.URL_INDEX = idx
        for _, name in ipairs(PARTS) do
            URL_SPECS[name] = column_spec(logfmt.columns()[idx[name]])
        end
    end
    local e, idx = url_engine, M.URL_INDEX
    for _, method in ipairs({ "GET", "CONNECT" }) do
        local got = table.pack(e:parse_url(input, method == "CONNECT"))
        if got.n ~= 6 then fail("parse_url: %d values", got.n) end
        for i, name in ipairs(PARTS) do check_value(URL_SPECS[name], got[i]) end
        local schema, host, port, path = got[1], got[2], got[3], got[4]
        -- the schema as written, lower-case (cut at 32 characters, its column's size)
        if schema and (input:sub(1, #schema):lower() ~= schema
                       or #schema < 32 and input:sub(#schema + 1, #schema + 3) ~= "://") then
            fail("schema %s of %s", q(schema), q(input))
        end
        if host and host:find("[A-Z]") then fail("host %s", q(host)) end
        if port and (math.type(port) ~= "integer" or port < 0 or port > 65535) then fail("port %s", q(port)) end
        if path and input:sub(1, 1) == "/" and clean_text(input) and input:sub(1, #path) ~= path then
            fail("path %s is not a prefix of %s", q(path), q(input))
        end
        local row = table.pack(e:process(method .. " " .. input .. " HTTP/1.1", M.ID))
        if row[1] ~= true then fail("process refused %s: %s", q(input), q(row[2])) end
        if #input > 0 then
            if row[idx.rest_method + 1] ~= method or row[idx.protocol + 1] ~= "HTTP/1.1" then
                fail("request split of %s", q(input))
            end
            if clean_text(input) and row[idx.url + 1] ~= input then
                fail("url %s, want %s", q(row[idx.url + 1]), q(input))
            end
            for i, name in ipairs(PARTS) do
                if row[idx[name] + 1] ~= got[i] then
                    fail("%s: the line gives %s, parse_url %s (%s)", name, q(row[idx[name] + 1]), q(got[i]), q(input))
                end
            end
        end
    end
end

return M
