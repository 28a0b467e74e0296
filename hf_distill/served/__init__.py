"""A teacher behind an inference server (vLLM and other servers of vLLM's OpenAI-compatible completions schema): the
`openai-compatible:` spec (`endpoint`), the request and response schema (`protocol`), the HTTP client with retries
(`client`), scoring batches ahead of the student (`pipeline`), whose terms apply (`providers`), and the served model
as a kind of `Teacher` (`teacher`, set up by `setup`). Built on `hf_distill.teacher`; the offline cache writer uses it
to fill a cache from a server."""
