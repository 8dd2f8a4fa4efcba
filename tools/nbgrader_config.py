"""nbgrader settings for a class run from `notebooks/exercises/solutions/` (see docs/INSTRUCTORS.md).

Copy this file to the root of your nbgrader course folder. The solutions mark the learner's code with
`# BEGIN SOLUTION` / `# END SOLUTION` (nbgrader finds its delimiters inside those lines) and the
graded checks with `### BEGIN HIDDEN TESTS` / `### END HIDDEN TESTS`; the stub is the one that
`tools/make_exercises.py` writes, so self-study copies and nbgrader's look the same.
"""

c = get_config()  # noqa: F821 (nbgrader provides get_config when it loads this file)

c.CourseDirectory.course_id = "gemma3-minimal"
c.ClearSolutions.code_stub = {"python": 'raise NotImplementedError("replace this line with your code")'}
# The checkers import gemma3_minimal and may load the tokenizer or build small models: allow time.
c.ExecutePreprocessor.timeout = 300
