-- 004: image uploads, Zoom out and Pan. A request made from an uploaded image names the stored
-- upload (re-encoded PNG under <data>/uploads/, named by the generation's id); NULL = none.
-- Zoom out and Pan are new derivation kinds.
ALTER TABLE generations ADD COLUMN upload TEXT;

INSERT INTO kinds (name) VALUES ('zoom'), ('pan');
