-- lake.lua: the data-lake consumer. Stores every line, byte for byte, as a row of raw_log.
--
--   lproc scripts/lake.lua [options]
local consumer = require "lproc.consumer"
local util = require "lproc.util"

local NAME = "lake"

-- raw_log: one row per line. `line` is LONGBLOB, so any byte sequence goes in intact. The
-- key is seq, the order of arrival: each insert appends (a random key like the id scatters
-- inserts over the whole table and splits its pages); the id is unique.
local RAW_LOG_SQL = [[
CREATE TABLE IF NOT EXISTS raw_log (
    seq         BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    id          ]] .. util.ID_SQL_TYPE .. [[,
    line        LONGBLOB NOT NULL,
    source      VARBINARY(1024) NULL,
    `offset`    BIGINT UNSIGNED NULL,
    ingested_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (seq),
    UNIQUE KEY raw_log_id (id),
    KEY raw_log_ingested (ingested_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4]]

local opts = util.getopt(arg, consumer.OPTIONS, NAME)
if opts.help then
    io.stdout:write("usage: lproc scripts/lake.lua [options]\n\n",
        "Consumes queue-data-lake and stores every line, byte for byte, in the table raw_log\n",
        "(created when missing).\n\noptions:\n", consumer.OPTIONS_HELP)
    os.exit(0)
end

consumer.run{
    name = NAME,
    opts = opts,
    tables = { { name = "raw_log", columns = { "id", "line", "source", "offset" } } },
    setup = function(db)
        local ok, err = db:execute(RAW_LOG_SQL)
        if not ok then return nil, "cannot create raw_log: " .. err end
        return true
    end,
    line = function(rows, line, id, source, offset)
        if source and #source > 1024 then source = source:sub(1, 1024) end
        rows.raw_log:add(id, line, source, offset)
    end,
    -- Only source and offset can be refused (id and line always fit): keep the line without them.
    fallback = function(rows, line, id)
        rows.raw_log:add(id, line, nil, nil)
    end,
}
