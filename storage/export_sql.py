"""The SQL of the exports: which generations are eligible, their scores, and raw rows.

Scores count only raters who have not opted out and, unless `:include_self`, not the
requester's own rating (`muse tune` leaves self-ratings out). `pseudonym(user_id)` and
`pseudonym_id(kind, id)` are functions the exporter registers on its connection (salted
hashes, see `export_rows.Pseudonyms`).
"""

from __future__ import annotations

# The ratings that count toward generation g's score.
_COUNTED = """FROM feedback AS f LEFT JOIN users AS fu ON fu.user_id = f.user_id
    WHERE f.generation_id = g.id AND COALESCE(fu.opted_out, 0) = 0
        AND (:include_self OR f.is_self = 0)"""

SCORE = f"(SELECT COALESCE(SUM(f.verdict), 0) {_COUNTED})"

# The requester's own good or bad verdict counts in the score.
SELF_VOTE = """(:include_self AND EXISTS (SELECT 1 FROM feedback AS f
    WHERE f.generation_id = g.id AND f.is_self = 1 AND f.verdict != 0))"""

# The pseudonyms, sorted, of the raters whose good or bad verdict counts in the score.
RATERS = f"""(SELECT json_group_array(p) FROM (
    SELECT pseudonym(f.user_id) AS p {_COUNTED} AND f.verdict != 0 ORDER BY p))"""

# Who asked for the text: the requester of a model generation; for an edit, the requester of
# the nearest model generation it corrects (through a chain of edits). NULL when purged.
REQUESTER = """CASE WHEN g.source != 'edit' THEN g.user_id ELSE (
    WITH RECURSIVE anc (id, parent_id, user_id, source) AS (
        SELECT a.id, a.parent_id, a.user_id, a.source FROM generations AS a
            WHERE a.id = g.parent_id
        UNION ALL
        SELECT a.id, a.parent_id, a.user_id, a.source FROM generations AS a
            JOIN anc ON a.id = anc.parent_id WHERE anc.source = 'edit')
    SELECT user_id FROM anc WHERE source = 'model' LIMIT 1) END"""

# Edits whose original, or any generation above them through a chain of edits, was requested by
# a user who opted out: an edit rewrites its original, so the original's requester's opt-out
# applies to it (beside the editor's own, the root's and the conversation owner's).
_OPTED_OUT_EDITS = """(
    WITH RECURSIVE blocked (id) AS (
        SELECT o.id FROM users AS ou JOIN generations AS o ON o.user_id = ou.user_id
            WHERE ou.opted_out = 1
        UNION
        SELECT e.id FROM generations AS e JOIN blocked AS b ON e.parent_id = b.id
            WHERE e.source = 'edit')
    SELECT id FROM blocked)"""

# Requester, owner of the root prompt and owner of the conversation must not have opted out;
# nor, for an edit, the requester of what it edits.
ELIGIBLE = f"""
FROM generations AS g
    LEFT JOIN users AS u ON u.user_id = g.user_id
    LEFT JOIN generations AS root ON root.id = g.root_id
    LEFT JOIN users AS ru ON ru.user_id = root.user_id
    LEFT JOIN conversations AS c ON c.id = g.conversation_id
    LEFT JOIN users AS cu ON cu.user_id = c.user_id
WHERE COALESCE(u.opted_out, 0) = 0 AND COALESCE(ru.opted_out, 0) = 0
    AND COALESCE(cu.opted_out, 0) = 0
    AND (g.source = 'model' OR g.id NOT IN {_OPTED_OUT_EDITS})
    AND (:since IS NULL OR g.created_utc >= :since)
    AND (:guild_id IS NULL OR g.guild_id = :guild_id)
    AND (:task IS NULL OR g.task = :task)
"""

TRAINING = " AND g.status = 'done' AND COALESCE(g.output, '') != ''"
MODEL_ONLY = " AND g.source = 'model'"
EDITS_ONLY = " AND g.source = 'edit'"

# The columns `_Exporter._generation` reads, in this order; score and self_vote follow.
BASE_COLUMNS = f"""g.id, g.root_id, g.user_id, g.task, g.model_id, g.model_revision,
    g.params_json, g.messages_json, g.output, g.created_utc, g.source, g.parent_id,
    pseudonym({REQUESTER}), {RATERS}"""


def scored(where: str, condition: str, order: str) -> str:
    """Eligible generations with `where`, then `condition` on their score, in `order`."""
    return f"""SELECT * FROM (SELECT {BASE_COLUMNS}, {SCORE} AS score, {SELF_VOTE} AS self_vote
                   {ELIGIBLE} {where})
               WHERE {condition} ORDER BY {order}"""


# Net votes per compared pair and the pseudonyms of the voters who picked a side; a voter who
# asked for one of the two takes counts only with `:include_self`.
COMPARISON_VOTES = """
SELECT k.generation_a_id, k.generation_b_id, SUM(k.winner = 'A'), SUM(k.winner = 'B'),
    MAX(k.user_id IN (ga.user_id, gb.user_id)),
    json_group_array(pseudonym(k.user_id)) FILTER (WHERE k.winner != 'tie')
FROM comparisons AS k
    JOIN generations AS ga ON ga.id = k.generation_a_id
    JOIN generations AS gb ON gb.id = k.generation_b_id
    LEFT JOIN users AS ku ON ku.user_id = k.user_id
WHERE COALESCE(ku.opted_out, 0) = 0
    AND (:include_self OR k.user_id NOT IN (ga.user_id, gb.user_id))
GROUP BY k.generation_a_id, k.generation_b_id
ORDER BY k.generation_a_id, k.generation_b_id
"""

_FEEDBACK = """(SELECT json_group_array(json(item)) FROM (
    SELECT json_object('user', pseudonym(f.user_id), 'thumbs', f.thumbs, 'stars', f.stars,
        'comment', f.comment, 'verdict', f.verdict,
        'is_self', json(IIF(f.is_self, 'true', 'false')),
        'created_utc', f.created_utc, 'updated_utc', f.updated_utc) AS item
    FROM feedback AS f LEFT JOIN users AS fu ON fu.user_id = f.user_id
    WHERE f.generation_id = g.id AND COALESCE(fu.opted_out, 0) = 0
    ORDER BY f.user_id))"""

_COMPARISONS = """(SELECT json_group_array(json(item)) FROM (
    SELECT json_object('id', k.id, 'prompt', k.prompt, 'generation_a_id', k.generation_a_id,
        'generation_b_id', k.generation_b_id, 'winner', k.winner,
        'user', pseudonym(k.user_id), 'created_utc', k.created_utc,
        'updated_utc', k.updated_utc) AS item
    FROM comparisons AS k LEFT JOIN users AS ku ON ku.user_id = k.user_id
    WHERE (k.generation_a_id = g.id OR k.generation_b_id = g.id)
        AND COALESCE(ku.opted_out, 0) = 0
    ORDER BY k.id))"""

_FOLLOWUPS = """(SELECT json_group_array(pseudonym_id('message', value)) FROM (
    SELECT value FROM json_each(g.followup_message_ids_json) ORDER BY key))"""

# `export_rows.contributors` in SQL: requester, editor and raters, sorted, each once.
_CONTRIBUTORS = """(SELECT json_group_array(p) FROM (
    SELECT requester AS p WHERE requester IS NOT NULL
    UNION SELECT pseudonym(user_id) WHERE source = 'edit'
    UNION SELECT value FROM json_each(raters)
    ORDER BY p))"""

# Raw rows are assembled by SQLite's JSON functions: decoding and re-encoding the JSON columns
# and the nested ratings in Python costs about 60 µs a row, several times the whole query.
# The metadata object has the keys of `export_rows.metadata` (a test holds them equal). Discord
# ids are pseudonymised like user ids, each kind with its own prefix; a thread is a channel.
RAW_ROWS = f"""
SELECT id, json_object(
    'id', id, 'root_id', root_id, 'user', pseudonym(user_id), 'task', task,
    'messages', json(messages_json), 'params', json(params_json), 'model_id', model_id,
    'model_revision', model_revision, 'output', output, 'created_utc', created_utc,
    'source', source, 'parent_id', parent_id, 'conversation_id', conversation_id,
    'thread_id', thread_id, 'guild_id', pseudonym_id('guild', guild_id),
    'channel_id', pseudonym_id('channel', channel_id),
    'message_id', pseudonym_id('message', message_id),
    'followup_message_ids', json(followup_message_ids), 'finish_reason', finish_reason,
    'tokens_in', tokens_in, 'tokens_out', tokens_out, 'ttft_ms', ttft_ms,
    'total_ms', total_ms, 'status', status, 'error', error, 'finished_utc', finished_utc,
    'deleted_utc', deleted_utc, 'fields', json(fields_json), 'score', score,
    'self_vote', json(IIF(self_vote, 'true', 'false')),
    'feedback', json(feedback), 'comparisons', json(comparisons),
    'metadata', json_object(
        'generation_id', id, 'task', task, 'model', model_id,
        'model_revision', model_revision, 'params', json(params_json), 'score', score,
        'self_vote', json(IIF(self_vote, 'true', 'false')), 'user', pseudonym(user_id),
        'created_utc', created_utc, 'source', source, 'persona', params_json -> '$.persona',
        'requester', requester, 'editor', IIF(source = 'edit', pseudonym(user_id), NULL),
        'raters', json(raters), 'contributors', json(contributors),
        'original_id', IIF(source = 'edit', parent_id, NULL)))
FROM (SELECT *, {_CONTRIBUTORS} AS contributors FROM (
      SELECT g.*, {SCORE} AS score, {SELF_VOTE} AS self_vote, {_FEEDBACK} AS feedback,
          {_COMPARISONS} AS comparisons, {_FOLLOWUPS} AS followup_message_ids,
          pseudonym_id('channel', c.thread_id) AS thread_id,
          pseudonym({REQUESTER}) AS requester, {RATERS} AS raters
      {ELIGIBLE} AND g.status != 'deleted'))
WHERE :min_score IS NULL OR score >= :min_score
ORDER BY id
"""
