-- Rolls back 0001: removes the whole billing schema (tables, functions, views, data).
DROP SCHEMA billing CASCADE;
