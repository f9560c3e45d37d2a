-- lproc.clean: the runtime of scripts/clean.lua: the clean consumer, and --dry-run.
--
-- scripts/clean.lua declares the rules (formats, columns, mapping function) and ends with
--     return require("lproc.clean").main(R, arg)
-- Both modes run the same code path: R:process(line, id) gives the row (or the reject) that the
-- consumer inserts, R:json(line, id) the same result as JSON for the dry-run.
local sys = require "lproc.sys"
local reader = require "lproc.reader"
local config = require "lproc.config"
local util = require "lproc.util"

local M = {}

local NAME = "clean"

-- When set, main() only hands the rules back: that is how SIGHUP reloads the script.
local loading = false

-- Compiles the rules with the configured GeoIP databases. -> R | raises
local function compile(R)
    if R.geoip == nil then R.geoip = config.geoip_paths() end
    return R:compile()
end

-- Loads `script` again and returns its compiled rules. -> R | nil, err
local function load_rules(script)
    loading = true
    local ok, R = pcall(dofile, script)
    loading = false
    if not ok then return nil, tostring(R) end
    if type(R) ~= "table" or type(R.process) ~= "function" then
        return nil, script .. " did not return its rules (it must end with: return require(\"lproc.clean\").main(R, arg))"
    end
    local cok, err = pcall(compile, R)
    if not cok then return nil, tostring(err) end
    return R
end

-- The DDL of clean_log from the rules' columns, and of clean_log_reject. The key is seq, the
-- order of arrival, so that each insert appends (as in raw_log); the id is unique and
-- compares as bytes (ascii_bin). An index on another column than the time is on (column,
-- timestamp): lines arrive in time order, so each insert lands at the end of its value's
-- range (a few hot pages, not a random one), and "status 500 in the last hour" is one range.
local function ddl(R)
    local cols, keys = { "    seq BIGINT UNSIGNED NOT NULL AUTO_INCREMENT" }, {}
    for _, c in ipairs(R:columns()) do
        local sqltype = c.name == "id" and util.ID_SQL_TYPE or c.type
        cols[#cols + 1] = string.format("    `%s` %s", c.name, sqltype)
        if c.index then
            keys[#keys + 1] = c.name == "timestamp" and "    KEY clean_log_timestamp (`timestamp`)"
                or string.format("    KEY clean_log_%s (`%s`, `timestamp`)", c.name, c.name)
        end
    end
    cols[#cols + 1] = "    ingested_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)"
    cols[#cols + 1] = "    PRIMARY KEY (seq)"
    cols[#cols + 1] = "    UNIQUE KEY clean_log_id (id)"
    for _, k in ipairs(keys) do cols[#cols + 1] = k end
    return "CREATE TABLE IF NOT EXISTS clean_log (\n" .. table.concat(cols, ",\n")
        .. "\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4", [[
CREATE TABLE IF NOT EXISTS clean_log_reject (
    id          ]] .. util.ID_SQL_TYPE .. [[,
    reason      VARCHAR(1024) NOT NULL,
    line        LONGBLOB NOT NULL,
    ingested_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    KEY clean_log_reject_ingested (ingested_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4]]
end

-- Creates the tables, and adds the columns a site added to its rules since. -> true | nil, err
local function setup(db, R)
    local clean, reject = ddl(R)
    local ok, err = db:execute(clean)
    if not ok then return nil, "cannot create clean_log: " .. err end
    ok, err = db:execute(reject)
    if not ok then return nil, "cannot create clean_log_reject: " .. err end
    local have = {}
    local rows = db:query("SELECT column_name AS name FROM information_schema.columns "
        .. "WHERE table_schema = DATABASE() AND table_name = 'clean_log'")
    for _, r in ipairs(rows or {}) do have[r.name] = true end
    for _, c in ipairs(R:columns()) do
        if not have[c.name] then
            ok, err = db:execute(string.format("ALTER TABLE clean_log ADD COLUMN `%s` %s", c.name, c.type))
            if not ok then return nil, "cannot add column " .. c.name .. " to clean_log: " .. err end
        end
    end
    return true
end

local function column_names(R)
    local names = {}
    for i, c in ipairs(R:columns()) do names[i] = c.name end
    return names
end

-- Dry-run: one JSON object per input line on stdout, nothing else touched.
local function dry_run(R, file, source_opt)
    local r, err = reader.open(file)
    if not r then util.die(NAME, "%s", (err:gsub("^reader%.open:", "cannot read"))) end
    local source = source_opt or (file == "-" and "stdin" or sys.realpath(file))
    local out = io.stdout
    out:setvbuf("full", 1 << 16)
    local json, lineid = R.json, util.lineid
    for line, off in r:lines() do
        json(R, line, lineid(source, off, line), out)
    end
    out:flush()
    r:close()
    os.exit(0)
end

local HELP = [[
usage: lproc scripts/clean.lua [options]
       lproc scripts/clean.lua --dry-run FILE [--source NAME]

Consumes queue-data-clean and turns each line into a row of clean_log, or into a row of
clean_log_reject with the reason. Tables are created when missing; columns a site adds to its
rules are added. SIGHUP reloads the rules from this script (a broken script is refused and the
old rules stay).

--dry-run FILE runs the rules on each line of FILE ("-" = stdin) and prints one JSON object
per line on stdout, touching no server: {"_table":"clean_log",...} or
{"_table":"clean_log_reject","id":...,"reason":...,"line":...}.

options:
  --dry-run FILE      see above
  --source NAME       (with --dry-run) source name used in ids (default: the absolute path)
]]

-- main(R, args): runs the consumer (or the dry-run) with the rules R; when the script is
-- being reloaded, returns R instead.
function M.main(R, args)
    if loading then return R end
    local spec = {}
    for k, v in pairs(require("lproc.consumer").OPTIONS) do spec[k] = v end
    spec["--dry-run"] = "string"
    spec["--source"] = "string"
    local opts, rest = util.getopt(args, spec, NAME)
    if opts.help then
        io.stdout:write(HELP, require("lproc.consumer").OPTIONS_HELP)
        os.exit(0)
    end
    if #rest > 0 then util.die(NAME, "unexpected argument '%s' (try --help)", rest[1]) end

    local ok, err = pcall(compile, R)
    if not ok then util.die(NAME, "%s", err) end

    if opts.dry_run then return dry_run(R, opts.dry_run, opts.source) end

    local script = args[0]
    local names = column_names(R)
    local n_clean, n_reject = 0, 0

    -- Turns one line into a clean_log row or a clean_log_reject row.
    local clean_rows, reject_rows
    local function put(id, line, ok2, ...)
        if ok2 then
            clean_rows:add(...)
            n_clean = n_clean + 1
        else
            local reason = util.safe((...))
            if #reason > 1000 then reason = reason:sub(1, 1000) end
            reject_rows:add(id, reason, line)
            n_reject = n_reject + 1
        end
    end

    require("lproc.consumer").run{
        name = NAME,
        opts = opts,
        tables = {
            { name = "clean_log", columns = names },
            { name = "clean_log_reject", columns = { "id", "reason", "line" } },
        },
        setup = function(db) return setup(db, R) end,
        line = function(rows, line, id, _, _, truncated)
            clean_rows, reject_rows = rows.clean_log, rows.clean_log_reject
            if truncated then
                put(id, line, false, "line was cut by the producer (over its --max-line)")
            else
                put(id, line, R:process(line, id))
            end
        end,
        fallback = function(rows, line, id, why)
            rows.clean_log_reject:add(id, util.safe("database refused the row: " .. tostring(why)):sub(1, 1000), line)
            n_reject = n_reject + 1
        end,
        reload = function()
            local NR, lerr = load_rules(script)
            if not NR then return nil, lerr end
            if table.concat(column_names(NR), ",") ~= table.concat(names, ",") then
                return nil, "the new rules change the columns of clean_log; restart the consumer to apply them"
            end
            R = NR
            return true
        end,
        counters = function() return string.format("%d clean, %d rejects", n_clean, n_reject) end,
    }
end

return M
