-- A forgotten user keeps a row (its id, dates and version) with every personal field gone.
ALTER TABLE users DROP CONSTRAINT users_status_check;
ALTER TABLE users ADD CONSTRAINT users_status_check
    CHECK (status IN ('active', 'deactivated', 'forgotten'));
