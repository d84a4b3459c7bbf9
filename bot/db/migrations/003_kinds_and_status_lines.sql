-- 003: generation kinds become rows of their own table (adding a kind is one INSERT in a new
-- migration, instead of rebuilding the CHECK), and a job's status line lives in its row instead
-- of a "status_line:<id>" string in bot_state. Rebuilds `generations` (SQLite cannot change a
-- CHECK in place); bot/db/database.py runs migrations with foreign keys off and checks them
-- before committing, as SQLite's documented table-rebuild procedure asks.

CREATE TABLE kinds (
    name  TEXT PRIMARY KEY
) WITHOUT ROWID;

INSERT INTO kinds (name) VALUES ('imagine'), ('reroll'), ('remix'), ('vary'), ('upscale');

CREATE TABLE new_generations (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,  -- shown as #N; job_id = str(id)
    user_id             INTEGER NOT NULL,
    user_name           TEXT,                               -- display name at request time
    guild_id            INTEGER,                            -- NULL outside a server
    channel_id          INTEGER,
    kind                TEXT    NOT NULL REFERENCES kinds (name),
    parent_id           INTEGER REFERENCES generations (id),
    parent_image_index  INTEGER,                            -- which image of the parent
    prompt              TEXT    NOT NULL,                   -- copy of recipe.prompt, for search
    negative            TEXT    NOT NULL DEFAULT '',
    recipe              TEXT    NOT NULL,                   -- GenerationRequest.to_json()
    status              TEXT    NOT NULL
        CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled', 'blocked')),
    refusal_reason      TEXT,                               -- code, when status = 'blocked'
    refusal_message     TEXT,                               -- the sentence the member saw
    error               TEXT,                               -- when status = 'failed'
    flagged             INTEGER NOT NULL DEFAULT 0,         -- any image flagged by the checker
    prompt_truncated    INTEGER NOT NULL DEFAULT 0,
    runs                INTEGER NOT NULL DEFAULT 0,         -- times handed to the worker
    attempts            INTEGER,                            -- worker attempts of the last run
    batch_size          INTEGER,
    created_at          REAL    NOT NULL,
    queued_at           REAL,
    started_at          REAL,
    finished_at         REAL,
    inference_seconds   REAL,
    timings             TEXT,                               -- JSON object of seconds
    message_channel_id  INTEGER,                            -- where the result was posted
    message_id          INTEGER,
    delivered_at        REAL,
    deleted_at          REAL,
    deleted_by          INTEGER,
    review              TEXT CHECK (review IN ('pending', 'released', 'removed')),  -- blocked prompt
    reviewed_by         INTEGER,
    reviewed_at         REAL,
    search_text         TEXT,                               -- prompt + negative, folded (002)
    status_channel_id   INTEGER,                            -- the job's public status line
    status_message_id   INTEGER
);

INSERT INTO new_generations (
    id, user_id, user_name, guild_id, channel_id, kind, parent_id, parent_image_index, prompt,
    negative, recipe, status, refusal_reason, refusal_message, error, flagged, prompt_truncated,
    runs, attempts, batch_size, created_at, queued_at, started_at, finished_at,
    inference_seconds, timings, message_channel_id, message_id, delivered_at, deleted_at,
    deleted_by, review, reviewed_by, reviewed_at, search_text
)
SELECT
    id, user_id, user_name, guild_id, channel_id, kind, parent_id, parent_image_index, prompt,
    negative, recipe, status, refusal_reason, refusal_message, error, flagged, prompt_truncated,
    runs, attempts, batch_size, created_at, queued_at, started_at, finished_at,
    inference_seconds, timings, message_channel_id, message_id, delivered_at, deleted_at,
    deleted_by, review, reviewed_by, reviewed_at, search_text
FROM generations;

-- Status lines kept as "status_line:<id>" → "<channel>:<message>" move into their rows.
UPDATE new_generations
SET status_channel_id = (
        SELECT CAST(substr(value, 1, instr(value, ':') - 1) AS INTEGER) FROM bot_state
        WHERE key = 'status_line:' || new_generations.id
    ),
    status_message_id = (
        SELECT CAST(substr(value, instr(value, ':') + 1) AS INTEGER) FROM bot_state
        WHERE key = 'status_line:' || new_generations.id
    )
WHERE EXISTS (
    SELECT 1 FROM bot_state
    WHERE key = 'status_line:' || new_generations.id AND instr(value, ':') > 0
);

DELETE FROM bot_state WHERE key LIKE 'status_line:%';

-- Ids are never reused (AUTOINCREMENT): the new table continues the old one's sequence.
DELETE FROM sqlite_sequence WHERE name = 'new_generations';
INSERT INTO sqlite_sequence (name, seq)
SELECT 'new_generations', seq FROM sqlite_sequence WHERE name = 'generations';

DROP TABLE generations;

ALTER TABLE new_generations RENAME TO generations;

CREATE INDEX generations_by_user_time ON generations (user_id, created_at);
CREATE INDEX generations_by_time ON generations (created_at);
CREATE INDEX generations_by_guild_time ON generations (guild_id, created_at);
CREATE INDEX generations_flagged ON generations (guild_id, created_at) WHERE flagged = 1;
CREATE INDEX generations_by_parent ON generations (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX generations_by_status ON generations (status, guild_id, created_at);
CREATE INDEX generations_active ON generations (id) WHERE status IN ('queued', 'running');
CREATE INDEX generations_undelivered ON generations (id)
    WHERE status IN ('done', 'failed') AND delivered_at IS NULL;
CREATE INDEX generations_prompt_review ON generations (guild_id) WHERE review = 'pending';
CREATE INDEX generations_status_lines ON generations (id) WHERE status_message_id IS NOT NULL;
