"""The ground every layer stands on: errors, the params loader, writing and reading files,
the names of the stage folders' files, and the stage runner. Imports nothing above it."""
