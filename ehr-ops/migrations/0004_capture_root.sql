-- The lakehouse root a capture slot writes to. A slot's position is only
-- meaningful for the tables it has filled, so a worker started with another
-- root must not continue from it.
ALTER TABLE capture_state ADD COLUMN lakehouse_root text;
