-- tansu 0.6.0's SQLite schema has no index on `header`, and every record it serves looks
-- its headers up by (topition, offset_id): each fetched record scanned every header of
-- every topic (14 per event here), so reading a backlog of 20,000 events took minutes at
-- 100% CPU. The index below makes that lookup a search; tansu creates its tables with
-- "IF NOT EXISTS" and leaves the index alone on later starts.
CREATE INDEX IF NOT EXISTS header_of_record ON header (topition, offset_id);
