-- 002: the prompt and negative folded like the banned-word filter does (NFKC, case folding,
-- invisible characters, accents, look-alike letters), so a moderator searching the log for
-- "kraken" also finds "ｋｒａｋｅｎ" and "kr​aken". Written by the store on every insert; rows
-- logged before this migration have NULL here and are searched by their plain text.
ALTER TABLE generations ADD COLUMN search_text TEXT;
