-- fuzz_regress_test.lua: the inputs the fuzzers found bugs with (tests/fuzz/regressions/*.bin)
-- and their seed corpora (tests/fuzz/corpus/*/), replayed with the fuzzers' invariants
-- (tests/fuzz/harness.lua) so that `make check` keeps them fixed. Every file goes through
-- R:process and R:json of scripts/clean.lua's rules (loaded as the consumer loads them) and of
-- the fuzzers' custom rules; a format-*.bin also through the format compiler, a url-*.bin also
-- through URL parsing. Naming: HARNESS-what.bin (HARNESS: clean, format, url).
local ROOT = os.getenv("LPROC_ROOT") or "."
local T = require "testing"
local sys = require "lproc.sys"
local H = dofile(ROOT .. "/tests/fuzz/harness.lua").init(ROOT)

local REGRESSIONS = ROOT .. "/tests/fuzz/regressions"

local function read(path)
    local f = assert(io.open(path, "rb"))
    local s = f:read("a")
    f:close()
    return s
end

-- The names in dir matching pattern, sorted.
local function files(dir, pattern)
    local t = {}
    for _, n in ipairs(assert(sys.listdir(dir))) do
        if n:match(pattern) then t[#t + 1] = n end
    end
    table.sort(t)
    return t
end

-- The message of the error fn raises, or nil.
local function raised(fn, ...)
    local ok, e = pcall(fn, ...)
    if ok then return nil end
    return tostring(e)
end

local R = H.default_rules()
local C = H.custom_rules()

-- Replays data as harness kind would; returns nil or what went wrong.
local function replay(kind, data)
    local e = raised(H.check, R, data) or raised(H.check, C, data)
    if e then return e end
    if kind == "format" then return raised(H.format_case, data) end
    if kind == "url" then return raised(H.url_case, data) end
    return nil
end

T.test("every regression input keeps every invariant", function()
    for _, name in ipairs(files(REGRESSIONS, "%.bin$")) do
        local kind = name:match("^(%a+)%-")
        T.ok(kind == "clean" or kind == "format" or kind == "url", name .. " is named HARNESS-what.bin")
        T.eq(replay(kind, read(REGRESSIONS .. "/" .. name)), nil, name)
    end
end)

T.test("every seed of the fuzzers keeps every invariant", function()
    local n = 0
    for _, kind in ipairs({ "clean", "url", "format" }) do
        local dir = ROOT .. "/tests/fuzz/corpus/" .. kind
        for _, name in ipairs(files(dir, "^%x+$")) do
            T.eq(replay(kind, read(dir .. "/" .. name)), nil, kind .. "/" .. name)
            n = n + 1
        end
    end
    T.ok(n >= 100, "seeds: " .. n)
end)

-- The invariants must be able to fail, or the fuzzers find nothing.
T.test("the invariants catch broken results", function()
    local function fake(...)
        local res = table.pack(...)
        return {
            process = function() return table.unpack(res, 1, res.n) end,
            json = function() return '{"_table":"clean_log_reject","id":"x","reason":"r","line":"l"}' end,
            columns = function() return { { name = "id", type = "CHAR(64)", null = false } } end,
        }
    end
    T.eq(raised(H.check, fake(true), "l"), "fuzz invariant: process: 0 values for 1 columns")
    T.eq(raised(H.check, fake(true, "y"), "l"), 'fuzz invariant: process: id "y"')
    T.eq(raised(H.check, fake(false), "l"), "fuzz invariant: process: a reject without a reason string (1 values)")
    T.eq(raised(H.check, fake(false, "a\27[2J"), "l"), 'fuzz invariant: process: reason "a\\27[2J"')
    T.eq(raised(H.check, fake(nil), "l"), 'fuzz invariant: process returned "nil"')
    T.eq(raised(H.check, fake(false, "r"), "l", "x"), nil, "a consistent reject")
    T.eq(raised(H.check, fake(false, "other"), "l", "x"), 'fuzz invariant: json: reason "r", process said "other"')

    local function json(s) return raised(H.decode_json, s) end
    T.eq(json('{"a":1,"b":"x\\u00e9","c":null,"d":true,"e":-0.5e+3}'), nil)
    T.eq(select(2, H.decode_json('{"a":"x\\u00e9\\n","b":12.5}')), { "x\u{e9}\n", { num = "12.5" } })
    T.eq(json('{"a":"\1"}'), 'fuzz invariant: JSON: raw control byte or bad UTF-8 in "{\\"a\\":\\"\\1\\"}"')
    T.eq(json('{"a":"\255"}'), 'fuzz invariant: JSON: raw control byte or bad UTF-8 in "{\\"a\\":\\"\255\\"}"')
    T.eq(json('{"a":"\194\133"}'), 'fuzz invariant: JSON: raw control byte or bad UTF-8 in "{\\"a\\":\\"\194\133\\"}"')
    T.eq(json('{"a":"\\x22"}'), 'fuzz invariant: JSON: bad escape at 7 of "{\\"a\\":\\"\\\\x22\\"}"')
    T.eq(json('{"a":"\\ud800"}'), 'fuzz invariant: JSON: surrogate escape in "{\\"a\\":\\"\\\\ud800\\"}"')
    T.eq(json('{"a":01}'), 'fuzz invariant: JSON: \',\' or \'}\' expected at 7 of "{\\"a\\":01}"')
    T.eq(json('{"a":1}x'), 'fuzz invariant: JSON: trailing bytes after the object: "{\\"a\\":1}x"')
    T.eq(json('{"a":nan}'), 'fuzz invariant: JSON: value expected at 6 of "{\\"a\\":nan}"')
end)

T.done()
