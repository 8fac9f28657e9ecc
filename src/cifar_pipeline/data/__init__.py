"""From the official archives to normalised inputs: the datasets' facts, the archive reader,
download, split and channel statistics. Imports only core."""
