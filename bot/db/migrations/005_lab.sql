-- 005: the diffusion lab. Its views and experiment grids are generation kinds of their own, and
-- what a lab view found (the facts its caption is written from, the names of its extra files
-- beside the images, e.g. the film as WebP) is kept per generation. A plain result keeps CLIP's
-- score of each image and, for a flagged image, the safety checker's per-concept scores here.

INSERT INTO kinds (name) VALUES
    ('lab_steps'), ('lab_words'), ('lab_clip'), ('lab_noise'), ('lab_grid');

CREATE TABLE lab_outputs (
    generation_id  INTEGER PRIMARY KEY REFERENCES generations (id),
    view           TEXT,                          -- 'steps', …, 'grid'; NULL for a plain result
    data           TEXT    NOT NULL DEFAULT '{}', -- JSON facts of the view
    files          TEXT    NOT NULL DEFAULT '[]', -- JSON list of file names in the images folder
    clip_scores    TEXT    NOT NULL DEFAULT '{}', -- JSON {image index: CLIP similarity}
    safety_scores  TEXT    NOT NULL DEFAULT '{}'  -- JSON {image index: [concept scores]}
) WITHOUT ROWID;
