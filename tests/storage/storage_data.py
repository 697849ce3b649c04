"""Constants shared by the storage tests (a module name no other test folder uses)."""

PROMPT = [
    {"role": "system", "content": "You are a storyteller."},
    {"role": "user", "content": "Write a story about a dragon."},
]
OTHER_PROMPT = [{"role": "user", "content": "A poem about rain."}]
COMPARE_PROMPT = [{"role": "user", "content": "Describe a lamp."}]
