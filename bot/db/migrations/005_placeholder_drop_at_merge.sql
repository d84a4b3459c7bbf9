-- 005: PLACEHOLDER in branch i10-lab only, so that 006 has no gap here (the loader refuses
-- gaps). Migrations 004-005 belong to other branches: drop this file when merging.
SELECT 1;
