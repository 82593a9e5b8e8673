-- Files too large for a record (staged uploads, rendered reports), in
-- chunks. A file is visible once its row in longrun_files names the writer
-- whose chunks make it up; chunks of unfinished or replaced writes have no
-- such row and are removed with the file's name.
CREATE TABLE longrun_files (
    name   text COLLATE "C" PRIMARY KEY,
    writer uuid NOT NULL,
    size   bigint NOT NULL,
    chunks integer NOT NULL
);
CREATE TABLE longrun_file_chunks (
    name   text COLLATE "C" NOT NULL,
    writer uuid NOT NULL,
    seq    integer NOT NULL,
    data   bytea NOT NULL,
    PRIMARY KEY (name, writer, seq)
);
-- Reports and CSV uploads are written once and read whole: skip trying to
-- compress them on the way in.
ALTER TABLE longrun_file_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
