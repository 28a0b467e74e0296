"""Small helpers with no knowledge of models: atomic file writes, text made safe to print, YAML front matter parsed
safely."""
