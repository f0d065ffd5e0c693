# The report's front page (workflow/report/workflow.rst) shows each experiment's comparison figure
# itself. Snakemake's `embeddedfigure` directive does not embed (it sets the data URI after docutils
# has built the image node, which keeps the file's path, broken in a report opened elsewhere), so the
# front page uses this one: the figure's file becomes a data URI before the node is built.
from docutils.parsers.rst import directives as _rst_directives
from docutils.parsers.rst.directives.images import Figure as _RstFigure
from snakemake.report.common import data_uri_from_file as _data_uri


class _EmbeddedResultFigure(_RstFigure):
    """``.. detnas-figure:: results/<experiment>/comparison.png``: a figure embedded in the page."""

    def run(self):
        self.arguments[0] = _data_uri(self.arguments[0])
        return super().run()


_rst_directives.register_directive("detnas-figure", _EmbeddedResultFigure)
