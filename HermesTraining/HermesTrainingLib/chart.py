"""The live training chart: loss and held-out Dice per step as MRML table, plot series and plot chart nodes.

Slicer's plot views show a ``vtkMRMLPlotChartNode`` natively (no Qt code here), the table can be saved with the
scene, and everything is GUI-free, so the same object works in the widget, in scripts and in headless tests.
Held-out Dice arrives only at validation steps: other rows hold NaN there, which the plot leaves as gaps.
"""

from __future__ import annotations

import math

import vtk

STEP, LOSS, DICE = "step", "loss", "held-out Dice"


class TrainingChart:
    """Owns one table, two series (loss; held-out Dice) and a chart, created in ``scene`` on first use."""

    def __init__(self, scene, name: str = "Hermes training"):
        self.scene = scene
        self.name = name
        self.tableNode = None
        self.chartNode = None
        self.seriesNodes: dict[str, object] = {}

    def _create(self) -> None:
        scene = self.scene
        self.tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{self.name} metrics")
        table = self.tableNode.GetTable()
        for column in (STEP, LOSS, DICE):
            array = vtk.vtkDoubleArray()
            array.SetName(column)
            table.AddColumn(array)
        self.chartNode = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", self.name)
        self.chartNode.SetTitle(self.name)
        self.chartNode.SetXAxisTitle("step")
        self.chartNode.SetYAxisTitle("loss / Dice")
        for column, color, style in ((LOSS, (0.8, 0.2, 0.2), "Solid"), (DICE, (0.1, 0.5, 0.9), "Solid")):
            series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{self.name} {column}")
            series.SetAndObserveTableNodeID(self.tableNode.GetID())
            series.SetXColumnName(STEP)
            series.SetYColumnName(column)
            series.SetPlotType(series.PlotTypeScatter)
            series.SetLineStyle(getattr(series, f"LineStyle{style}"))
            series.SetMarkerStyle(series.MarkerStyleCircle if column == DICE else series.MarkerStyleNone)
            series.SetColor(*color)
            self.chartNode.AddAndObservePlotSeriesNodeID(series.GetID())
            self.seriesNodes[column] = series

    def add(self, step: int, loss: float | None = None, dice: float | None = None) -> None:
        """Append one row; a missing value is NaN (a gap in that curve)."""
        if loss is None and dice is None:
            return
        if self.tableNode is None:
            self._create()
        table = self.tableNode.GetTable()
        row = table.InsertNextBlankRow()
        for column, value in ((STEP, step), (LOSS, loss), (DICE, dice)):
            table.GetColumnByName(column).SetValue(row, math.nan if value is None else float(value))
        table.Modified()
        self.tableNode.Modified()

    def rows(self) -> list[tuple[float, float, float]]:
        if self.tableNode is None:
            return []
        table = self.tableNode.GetTable()
        columns = [table.GetColumnByName(c) for c in (STEP, LOSS, DICE)]
        return [tuple(c.GetValue(r) for c in columns) for r in range(table.GetNumberOfRows())]

    def remove(self) -> None:
        for node in [*self.seriesNodes.values(), self.chartNode, self.tableNode]:
            if node is not None and node.GetScene() is not None:
                self.scene.RemoveNode(node)
        self.tableNode, self.chartNode, self.seriesNodes = None, None, {}
