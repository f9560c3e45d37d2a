-- lproc's schema (MariaDB / MySQL, utf8mb4). The consumers create these tables when they are
-- missing (lake.lua: raw_log; clean.lua: clean_log and clean_log_reject, from its rules'
-- column list R:columns()), so running this file by hand is optional. A test checks that
-- this file and the consumers create the same tables.

-- Every line, byte for byte (LONGBLOB: any byte sequence), with where it came from.
CREATE TABLE IF NOT EXISTS raw_log (
    seq         BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    id          CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    line        LONGBLOB NOT NULL,
    source      VARBINARY(1024) NULL,
    `offset`    BIGINT UNSIGNED NULL,
    ingested_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (seq),
    UNIQUE KEY raw_log_id (id),
    KEY raw_log_ingested (ingested_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- The tables of the cleaning step. Custom columns declared in the rules come after vhost. Identifiers are quoted: `schema` is a reserved word.
--
-- Values: timestamp and its parts are UTC; strings are valid UTF-8 without control characters
-- (replaced by U+FFFD) and cut to their column's size; size_kilo_bytes and size_mega_bytes are
-- exact (bytes / 1024 and bytes / 1048576 have at most 10 and 20 decimals).
CREATE TABLE IF NOT EXISTS clean_log (
    seq BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    `id` CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    `timestamp` DATETIME,
    `year` SMALLINT,
    `month` TINYINT,
    `day` TINYINT,
    `day_of_week` VARCHAR(9),
    `time` TIME,
    `ip` VARCHAR(64),
    `country` VARCHAR(128),
    `country_code` CHAR(2),
    `city` VARCHAR(128),
    `session` VARCHAR(255),
    `user` VARCHAR(255),
    `is_email` BOOLEAN,
    `email_domain` VARCHAR(255),
    `rest_method` VARCHAR(32),
    `url` MEDIUMTEXT,
    `schema` VARCHAR(32),
    `host` VARCHAR(255),
    `port` SMALLINT UNSIGNED,
    `path` MEDIUMTEXT,
    `query` MEDIUMTEXT,
    `rest_session` VARCHAR(255),
    `protocol` VARCHAR(16),
    `status` SMALLINT UNSIGNED,
    `status_verbose` VARCHAR(64),
    `size_bytes` BIGINT UNSIGNED,
    `size_kilo_bytes` DECIMAL(26,10),
    `size_mega_bytes` DECIMAL(33,20),
    `referrer` MEDIUMTEXT,
    `user_agent` MEDIUMTEXT,
    `browser` VARCHAR(64),
    `os` VARCHAR(64),
    `device` VARCHAR(16),
    `request_time` DECIMAL(12,3),
    `vhost` VARCHAR(255),
    ingested_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (seq),
    UNIQUE KEY clean_log_id (id),
    KEY clean_log_timestamp (`timestamp`),
    KEY clean_log_ip (`ip`, `timestamp`),
    KEY clean_log_host (`host`, `timestamp`),
    KEY clean_log_status (`status`, `timestamp`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS clean_log_reject (
    id          CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    reason      VARCHAR(1024) NOT NULL,
    line        LONGBLOB NOT NULL,
    ingested_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    KEY clean_log_reject_ingested (ingested_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
