-- re_test.lua: lproc.re (PCRE2) - captures, offsets, bytes, UTF-8, flags, errors, gmatch, gsub.
local T = require "testing"
local re = require "lproc.re"

-- The message of the error fn raises, without the "chunk:line: " position Lua adds.
local function errmsg(fn)
    local ok, e = pcall(fn)
    T.ok(not ok, "an error")
    return (tostring(e):gsub("^[^\n:]*:%d+: ", ""))
end

local function pack(...) return table.pack(...) end
local function R(...) return table.pack(...) end
local NOMATCH = R(nil)

local COMBINED = [==[^(\S+) (\S+) (\S+) \[([^\]]+)\] "(\S+) (\S+) ([^"]+)" (\d{3}) (\d+|-)]==]
local LINE = '203.0.113.9 - frank [10/Oct/2000:13:55:36 -0700] "GET /a.gif HTTP/1.0" 200 2326'

-- { pattern, flags, method, subject, init, want }
local cases = {
    -- numbered captures
    { COMBINED, "", "match", LINE, nil, R("203.0.113.9", "-", "frank", "10/Oct/2000:13:55:36 -0700",
        "GET", "/a.gif", "HTTP/1.0", "200", "2326") },
    { "(\\d+)-(\\d+)", "", "match", "tel 12-345 x", nil, R("12", "345") },
    { "(\\d+)-(\\d+)", "", "find", "tel 12-345 x", nil, R(5, 10, "12", "345") },
    { "\\d+", "", "match", "ab 42 7", nil, R("42") },
    { "\\d+", "", "find", "ab 42 7", nil, R(4, 5) },
    { "\\d+", "", "match", "no digits", nil, NOMATCH },
    { "\\d+", "", "find", "no digits", nil, NOMATCH },
    { "", "", "find", "abc", nil, R(1, 0) },
    { "", "", "match", "", nil, R("") },
    { "((a)(b))", "", "match", "xab", nil, R("ab", "a", "b") },
    -- unset groups are false and keep their positions
    { "(a)?(b)", "", "match", "b", nil, R(false, "b") },
    { "(a)|(b)", "", "match", "b", nil, R(false, "b") },
    { "(a)|(b)", "", "match", "a", nil, R("a", false) },
    { "(a)|(b)(c)?", "", "find", "xb", nil, R(2, 2, false, "b", false) },
    { "(a*)", "", "match", "bbb", nil, R("") },
    -- init: positive, negative, zero, at and beyond the end
    { "\\d", "", "find", "1a2b3", 2, R(3, 3) },
    { "\\d", "", "find", "1a2b3", 3, R(3, 3) },
    { "\\d", "", "find", "1a2b3", -1, R(5, 5) },
    { "\\d", "", "find", "1a2b3", -2, R(5, 5) },
    { "\\d", "", "find", "1a2b3", -3, R(3, 3) },
    { "\\d", "", "find", "1a2b3", -100, R(1, 1) },
    { "\\d", "", "find", "1a2b3", 0, R(1, 1) },
    { "\\d", "", "find", "1a2b3", 6, NOMATCH },
    { "$", "", "find", "1a2b3", 6, R(6, 5) },
    { "", "", "match", "1a2b3", 6, R("") },
    { "", "", "match", "1a2b3", 7, NOMATCH },
    { "", "", "find", "1a2b3", math.maxinteger, NOMATCH },
    { "", "", "find", "1a2b3", math.mininteger, R(1, 0) },
    { "^\\d", "", "find", "1a2b3", 3, NOMATCH },         -- ^ is the subject start
    { "\\G\\d", "", "find", "1a2b3", 3, R(3, 3) },       -- \G is init
    { "(?<=a)\\d", "", "find", "1a2b3", 3, R(3, 3) },    -- lookbehind sees before init
    -- NUL bytes in subject and pattern
    { "a\0b", "", "find", "xa\0by", nil, R(2, 4) },
    { "a\\x00b", "", "find", "xa\0by", nil, R(2, 4) },
    { "\\0", "", "find", "abc\0", nil, R(4, 4) },
    { "([^\0]*)\0(.*)", "s", "match", "key\0val\0ue", nil, R("key", "val\0ue") },
    { "b", "", "find", "\0\0\0b", nil, R(4, 4) },
    -- bytes that are not UTF-8, without u: plain bytes
    { "\xff(.)", "", "match", "a\xff\xfe", nil, R("\xfe") },
    { ".+", "", "match", "\xc3\x28\xa0\xa1", nil, R("\xc3\x28\xa0\xa1") },
    { "\\w+", "", "match", "\xc3\xa9t\xc3\xa9", nil, R("t") },
    { "[\x80-\xff]+", "", "match", "ab\xe9\xff\x80cd", nil, R("\xe9\xff\x80") },
    -- u: UTF-8 and Unicode properties
    { "^.$", "u", "match", "\xc3\xa9", nil, R("\xc3\xa9") },
    { "^.$", "", "match", "\xc3\xa9", nil, NOMATCH },
    { "\\w+", "u", "match", "--\xc3\xa9t\xc3\xa9--", nil, R("\xc3\xa9t\xc3\xa9") },
    { "\xc3\x89T\xc3\x89", "ui", "find", "l'\xc3\xa9t\xc3\xa9", nil, R(3, 7) },
    { "\\p{Greek}+", "u", "match", "abc \xce\xb1\xce\xb2\xce\xb3 d", nil, R("\xce\xb1\xce\xb2\xce\xb3") },
    { "(.)", "u", "find", "\xe2\x82\xac", nil, R(1, 3, "\xe2\x82\xac") },
    -- u with invalid UTF-8 subjects: no match crosses an invalid sequence
    { "a.b", "u", "match", "a\xffb", nil, NOMATCH },
    { "\\w+", "u", "match", "\xff\xfe\xc3\xa9t\xc3\xa9\xff", nil, R("\xc3\xa9t\xc3\xa9") },
    { "b", "u", "find", "\xc3\xa9\xff\xc3b", nil, R(5, 5) },
    { "\\w", "u", "find", "\xc3\xa9x", 2, R(3, 3) },        -- init inside a character
    -- flags
    { "hello", "i", "find", "say HeLLo", nil, R(5, 9) },
    { "hello", "", "find", "say HeLLo", nil, NOMATCH },
    { "^b$", "m", "find", "a\nb\nc", nil, R(3, 3) },
    { "^b$", "", "find", "a\nb\nc", nil, NOMATCH },
    { "a.c", "s", "match", "a\nc", nil, R("a\nc") },
    { "a.c", "", "match", "a\nc", nil, NOMATCH },
    { " a  b # comment\n c", "x", "find", "xabc", nil, R(2, 4) },
    { "b", "a", "find", "abc", nil, NOMATCH },
    { "b", "a", "find", "abc", 2, R(2, 2) },
    { "B$", "im", "find", "a\nb\nc", nil, R(3, 3) },
    -- numbers as subjects
    { "(\\d)(\\d)$", "", "match", 12345, nil, R("4", "5") },
}

-- s with control and non-ASCII bytes as \xHH, for test names.
local function printable(s)
    return (s:gsub("[%c\128-\255]", function(c) return string.format("\\x%02x", c:byte()) end))
end

for i, c in ipairs(cases) do
    local name = printable(string.format("case %d: %s /%s/%s on \"%s\"", i, c[3], c[1], c[2], tostring(c[4])))
    T.test(name, function()
        local rx = re.compile(c[1], c[2])
        T.eq(pack(rx[c[3]](rx, c[4], c[5])), c[6])
    end)
end

T.test("exec: numbered, named, unset, positions", function()
    local rx = re.compile("(?<year>\\d{4})-(?<month>\\d\\d)(?:-(?<day>\\d\\d))?( UTC)?")
    local t, s, e = rx:exec("on 2024-05 at")
    T.eq(t, { [0] = "2024-05", "2024", "05", false, false, year = "2024", month = "05", day = false })
    T.eq({ s, e }, { 4, 10 })
    t, s, e = rx:exec("2024-05-06 UTC")
    T.eq(t, { [0] = "2024-05-06 UTC", "2024", "05", "06", " UTC", year = "2024", month = "05", day = "06" })
    T.eq({ s, e }, { 1, 14 })
    T.eq(pack(rx:exec("nothing")), NOMATCH)
    t, s, e = re.compile("x"):exec("aax", -1)
    T.eq({ t, s, e }, { { [0] = "x" }, 3, 3 })
    T.eq(pack(re.compile("x"):exec("aax", 5)), NOMATCH)
end)

T.test("exec: duplicate names take the group that is set", function()
    local rx = re.compile("(?J)(?<v>a+)|(?<v>b+)")
    T.eq(rx:exec("bb"), { [0] = "bb", false, "bb", v = "bb" })
    T.eq(rx:exec("aa"), { [0] = "aa", "aa", false, v = "aa" })
    T.eq(rx:names(), { "v", "v" })
end)

T.test("names, ncaptures, jit, tostring", function()
    local rx = re.compile("(?<zeta>z)(x)(?<alpha>a)(?:n)(?<mid>m)", "i")
    T.eq(rx:names(), { "zeta", "alpha", "mid" })
    T.eq(rx:ncaptures(), 4)
    local nojit = os.getenv("LPROC_RE_NOJIT")
    T.eq(rx:jit(), nojit == nil or nojit == "" or nojit == "0")
    T.eq(tostring(rx), 're.regex("(?<zeta>z)(x)(?<alpha>a)(?:n)(?<mid>m)", "i")')
    T.eq(re.compile("abc"):names(), {})
    T.eq(re.compile("abc"):ncaptures(), 0)
    T.eq(tostring(re.compile('a"\\\n\0\xff\t')), 're.regex("a\\"\\\\\\n\\x00\\xff\\t", "")')
end)

T.test("compile errors: exact messages", function()
    T.eq(errmsg(function() return re.compile("a(b") end),
        're.compile: missing closing parenthesis at offset 3 in pattern "a(b"')
    T.eq(errmsg(function() return re.compile("x[") end),
        're.compile: missing terminating ] for character class at offset 2 in pattern "x["')
    T.eq(errmsg(function() return re.compile("a\0(\n\"\\\xff") end),
        're.compile: missing closing parenthesis at offset 7 in pattern "a\\x00(\\n\\"\\\\\\xff"')
    T.eq(errmsg(function() return re.compile("*a") end),
        're.compile: quantifier does not follow a repeatable item at offset 0 in pattern "*a"')
    T.eq(errmsg(function() return re.compile("(*UTF)x") end),
        're.compile: using UTF is disabled by the application at offset 6 in pattern "(*UTF)x"')
    T.eq(errmsg(function() return re.compile("\xff", "u") end),
        're.compile: UTF-8 error: illegal byte (0xfe or 0xff) at offset 0 in pattern "\\xff"')
    T.eq(errmsg(function() return re.compile("(?<n>a)(?<n>b)") end),
        're.compile: two named subpatterns have the same name (PCRE2_DUPNAMES not set) at offset 12 ' ..
        'in pattern "(?<n>a)(?<n>b)"')
end)

T.test("argument errors", function()
    local rx = re.compile("a")
    local want = {
        { function() return re.compile() end, "re.compile: bad argument #1 (string expected, got no value)" },
        { function() return re.compile(5) end, "re.compile: bad argument #1 (string expected, got number)" },
        { function() return re.compile("a", 1) end, "re.compile: bad argument #2 (string expected, got number)" },
        { function() return re.compile("a", "iq") end, 're.compile: bad argument #2 (unknown flag "q")' },
        { function() return rx:match() end, "re.match: bad argument #1 (string expected, got no value)" },
        { function() return rx:find({}) end, "re.find: bad argument #1 (string expected, got table)" },
        { function() return rx:exec(true) end, "re.exec: bad argument #1 (string expected, got boolean)" },
        { function() return rx:gmatch(nil) end, "re.gmatch: bad argument #1 (string expected, got nil)" },
        { function() return rx:gsub("a") end,
            "re.gsub: bad argument #2 (string/function/table expected, got no value)" },
        { function() return rx:gsub("a", "b", "x") end, "re.gsub: bad argument #3 (integer expected, got string)" },
        { function() return rx:match("a", "1") end, "re.match: bad argument #2 (number expected, got string)" },
        { function() return rx:find("a", 1.5) end,
            "re.find: bad argument #2 (number has no integer representation)" },
        { function() return rx.match("a") end, "re.match: bad self (lproc.re.regex expected, got string)" },
        { function() return rx.names(nil) end, "re.names: bad self (lproc.re.regex expected, got nil)" },
        { function() return rx.close(1) end, "re.close: bad self (lproc.re.regex expected, got number)" },
        { function() return rx:gsub("a", "%2") end, "re.gsub: invalid capture index %2 in replacement string" },
        { function() return rx:gsub("a", "%x") end, "re.gsub: invalid use of '%' in replacement string" },
        { function() return rx:gsub("a", "50%") end, "re.gsub: invalid use of '%' in replacement string" },
        { function() return rx:gsub("a", function() return {} end) end,
            "re.gsub: invalid replacement value (a table)" },
    }
    for i, w in ipairs(want) do
        T.eq(errmsg(w[1]), w[2], "error " .. i)
    end
end)

T.test("closed regex", function()
    local rx = re.compile("(a)")
    T.eq(rx:close(), true)
    T.eq(rx:close(), true)
    T.eq(tostring(rx), "re.regex (closed)")
    for _, m in ipairs({ "match", "find", "exec", "gmatch", "names", "ncaptures", "jit" }) do
        T.eq(errmsg(function() return rx[m](rx, "a") end), "re." .. m .. ": regex is closed")
    end
    T.eq(errmsg(function() return rx:gsub("a", "b") end), "re.gsub: regex is closed")
    local it = re.compile("a")
    local f = it:gmatch("aaa")
    T.eq(f(), "a")
    it:close()
    T.eq(errmsg(f), "re.gmatch: regex is closed")
    local outer
    do
        local r <close> = re.compile("x")
        outer = r
        T.eq(r:match("x"), "x")
    end
    T.eq(tostring(outer), "re.regex (closed)")
    for _ = 1, 100 do re.compile("(x)(y)") end
    collectgarbage()
end)

T.test("match limit", function()
    local rx = re.compile("(a+)+$")
    local s = string.rep("a", 40) .. "b"
    T.eq(pack(rx:match(s)), R(nil, "re.match: match limit exceeded"))
    T.eq(pack(rx:find(s)), R(nil, "re.find: match limit exceeded"))
    T.eq(pack(rx:exec(s)), R(nil, "re.exec: match limit exceeded"))
    T.eq(pack(rx:gsub(s, "x")), R(nil, "re.gsub: match limit exceeded"))
    T.eq(errmsg(function() for _ in rx:gmatch(s) do end end), "re.gmatch: match limit exceeded")
    T.eq(rx:match("aaa"), "aaa")        -- the regex still works
end)

T.test("1 MB subjects", function()
    local big = string.rep("x", 1024 * 1024) .. "needle" .. string.rep("y", 10)
    T.eq(pack(re.compile("ne(e)dle"):find(big)), R(1048577, 1048582, "e"))
    T.eq(pack(re.compile("y+$"):find(big)), R(1048583, 1048592))
    T.eq(#re.compile("x+"):match(big), 1024 * 1024)
    local ab = string.rep("ab", 512 * 1024) .. "c"
    T.eq(pack(re.compile("(?:a|b)*c"):find(ab)), R(1, 1024 * 1024 + 1))
    T.eq(pack(re.compile("^(?:a|b)*(c)$"):find(ab)), R(1, 1024 * 1024 + 1, "c"))
    local n = 0
    for w in re.compile("ab"):gmatch(ab) do n = n + #w end
    T.eq(n, 1024 * 1024)
    local out, count = re.compile("b"):gsub(ab, "")
    T.eq({ #out, count }, { 512 * 1024 + 1, 512 * 1024 })
end)

-- gmatch and gsub follow string.gmatch and string.gsub where the patterns agree.
local same = {
    -- { PCRE2 pattern, Lua pattern, subject }
    { "\\w+", "%w+", "hello world, foo+bar 42" },
    { "x*", "x*", "abxxc" },
    { "a*", "a*", "baaac" },
    { "", "", "abc" },
    { "\\d", "%d", "a1b22c333" },
    { "(\\w)(\\d)", "(%a)(%d)", "a1 b2 cc d3" },
    { "(b*)", "(b*)", "abbcb" },
    { "[^,]*", "[^,]*", "a,,b,c," },
}

T.test("gmatch like string.gmatch", function()
    for _, s in ipairs(same) do
        local got, want = {}, {}
        for a, b in re.compile(s[1]):gmatch(s[3]) do got[#got + 1] = { a, b } end
        for a, b in s[3]:gmatch(s[2]) do want[#want + 1] = { a, b } end
        T.eq(got, want, s[1])
    end
end)

T.test("gsub like string.gsub", function()
    local up = function(w) return w:upper() end
    for _, s in ipairs(same) do
        for _, repl in ipairs({ "<%0>", "[%1]", "%%", "", up, { a = "A", hello = "HI", ["1"] = false } }) do
            for _, n in ipairs({ false, 0, 1, 2, 100 }) do
                local n1 = n or nil
                T.eq(pack(re.compile(s[1]):gsub(s[3], repl, n1)), pack(s[3]:gsub(s[2], repl, n1)),
                    s[1] .. " " .. tostring(repl) .. " " .. tostring(n))
            end
        end
    end
end)

T.test("gmatch: init, groups, anchored, UTF-8", function()
    local got = {}
    for k, v in re.compile("(\\w+)=(\\w*)"):gmatch("a=1 b= c=3", 3) do got[#got + 1] = k .. ":" .. v end
    T.eq(got, { "b:", "c:3" })
    got = {}
    for d in re.compile("\\d", "a"):gmatch("12a3") do got[#got + 1] = d end
    T.eq(got, { "1", "2" })
    got = {}
    for c in re.compile("", "u"):gmatch("\xc3\xa9a") do got[#got + 1] = c end
    T.eq(got, { "", "", "" })
    got = {}
    for c in re.compile("(?:)", "u"):gmatch("\xc3\xa9a") do got[#got + 1] = #c end
    T.eq(got, { 0, 0, 0 })
    got = {}
    for w in re.compile("x"):gmatch("xxx", 10) do got[#got + 1] = w end
    T.eq(got, {})
    local f = re.compile("b"):gmatch("abab")
    T.eq({ f(), f(), f(), f() }, { "b", "b" })
end)

T.test("gsub: replacement forms, callbacks that use the same regex", function()
    local rx = re.compile("(?<k>\\w+)=(?<v>\\w+)")
    T.eq(pack(rx:gsub("a=1, b=2", "%2=%1")), R("1=a, 2=b", 2))
    T.eq(pack(rx:gsub("a=1, b=2", "%0%%")), R("a=1%, b=2%", 2))
    T.eq(pack(rx:gsub("a=1, b=2", { a = "A" })), R("A, b=2", 2))
    T.eq(pack(rx:gsub("a=1, b=2", function(k, v)
        return k .. (rx:match(k .. "=" .. v .. v)) .. select(2, rx:match("z=9"))
    end)), R("aa9, bb9", 2))
    T.eq(pack(re.compile("x"):gsub("axbxc", "%1")), R("axbxc", 2))
    T.eq(pack(re.compile("\\d+"):gsub("a1b22", function(d) return tonumber(d) * 2 end)), R("a2b44", 2))
    T.eq(pack(re.compile("\\d+"):gsub("a1b22", 7)), R("a7b7", 2))
    T.eq(pack(re.compile("\0"):gsub("a\0b\0", "\0\0")), R("a\0\0b\0\0", 2))
    T.eq(pack(re.compile("b", "a"):gsub("bbab", "x")), R("xxab", 2))
    T.eq(pack(re.compile(".", "u"):gsub("\xc3\xa9\xffa", "<%0>")), R("<\xc3\xa9>\xff<a>", 2))
    local self
    self = re.compile("a")
    T.eq(errmsg(function() return self:gsub("aaa", function() self:close() end) end),
        "re.gsub: regex is closed")
end)

T.done()
