-- 001: the prompt log, images, bans, banned words, the moderators' audit log, per-server settings.
-- Times are UTC Unix seconds (REAL). Discord ids are INTEGER. Applied in one transaction by
-- bot/store.py, which then sets PRAGMA user_version = 1.

-- Every request, accepted or refused. The queue's durable truth is `status`.
CREATE TABLE generations (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,  -- shown as #N; job_id = str(id)
    user_id             INTEGER NOT NULL,
    user_name           TEXT,                               -- display name at request time
    guild_id            INTEGER,                            -- NULL outside a server
    channel_id          INTEGER,
    kind                TEXT    NOT NULL
        CHECK (kind IN ('imagine', 'reroll', 'remix', 'vary', 'upscale')),
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
    reviewed_at         REAL
);

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

-- One row per image file <data>/images/<generation_id>_<idx>.png.
CREATE TABLE images (
    generation_id  INTEGER NOT NULL REFERENCES generations (id) ON DELETE CASCADE,
    idx            INTEGER NOT NULL CHECK (idx >= 0),
    seed           INTEGER NOT NULL,
    file           TEXT    NOT NULL,                         -- relative to the images folder
    width          INTEGER NOT NULL DEFAULT 0,
    height         INTEGER NOT NULL DEFAULT 0,
    flagged        INTEGER NOT NULL DEFAULT 0,
    review         TEXT CHECK (review IN ('pending', 'released', 'removed')),  -- NULL: not flagged
    reviewed_by    INTEGER,
    reviewed_at    REAL,
    PRIMARY KEY (generation_id, idx)
) WITHOUT ROWID;

CREATE INDEX images_pending_review ON images (generation_id, idx) WHERE review = 'pending';

-- Bans per server; the history is kept (lifted bans have lifted_at).
CREATE TABLE bans (
    id          INTEGER PRIMARY KEY,
    guild_id    INTEGER NOT NULL,
    user_id     INTEGER NOT NULL,
    reason      TEXT    NOT NULL DEFAULT '',
    banned_by   INTEGER NOT NULL,
    created_at  REAL    NOT NULL,
    until       REAL,                                        -- NULL = permanent
    lifted_at   REAL,
    lifted_by   INTEGER
);

CREATE INDEX bans_by_user ON bans (guild_id, user_id, created_at);

CREATE TABLE banned_words (
    guild_id  INTEGER NOT NULL,
    word      TEXT    NOT NULL,
    added_by  INTEGER,
    added_at  REAL    NOT NULL,
    PRIMARY KEY (guild_id, word)
) WITHOUT ROWID;

-- Every moderator action: who, what, on whom or what, why, when.
CREATE TABLE audit_log (
    id                    INTEGER PRIMARY KEY,
    guild_id              INTEGER,
    actor_id              INTEGER NOT NULL,
    action                TEXT    NOT NULL,
    target_user_id        INTEGER,
    target_generation_id  INTEGER,
    reason                TEXT,
    details               TEXT,                              -- JSON object
    created_at            REAL    NOT NULL
);

CREATE INDEX audit_by_guild_time ON audit_log (guild_id, created_at);

CREATE TABLE guild_settings (
    guild_id        INTEGER PRIMARY KEY,
    safety_mode     TEXT    NOT NULL DEFAULT 'withhold' CHECK (safety_mode IN ('withhold', 'spoiler')),
    log_channel_id  INTEGER,
    words_seeded    INTEGER NOT NULL DEFAULT 0,              -- default banned words copied in
    updated_at      REAL
);

-- Small global state that must survive a restart (e.g. the queue's pause switch).
CREATE TABLE bot_state (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
) WITHOUT ROWID;
