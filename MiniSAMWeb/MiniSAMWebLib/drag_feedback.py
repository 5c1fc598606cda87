"""The rectangle a box drag shows in a slice view while the button is down (display coordinates)."""

from __future__ import annotations

from vtkmodules.vtkCommonCore import vtkPoints
from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData
from vtkmodules.vtkRenderingCore import vtkActor2D, vtkPolyDataMapper2D, vtkRenderer

COLOR = (1.0, 0.85, 0.1)  # yellow, visible on CT grey and on segment colours


class DragRectangle:
    """A 2D outline from the press to the mouse, drawn over a view's renderer."""

    def __init__(self) -> None:
        self._points = vtkPoints()
        self._points.SetNumberOfPoints(4)
        outline = vtkCellArray()
        outline.InsertNextCell(5, [0, 1, 2, 3, 0])
        polydata = vtkPolyData()
        polydata.SetPoints(self._points)
        polydata.SetLines(outline)
        mapper = vtkPolyDataMapper2D()
        mapper.SetInputData(polydata)
        self.actor = vtkActor2D()
        self.actor.SetMapper(mapper)
        self.actor.GetProperty().SetColor(*COLOR)
        self.actor.GetProperty().SetLineWidth(2)
        self.actor.VisibilityOff()
        self._renderer: vtkRenderer | None = None

    def set_renderer(self, renderer: vtkRenderer | None) -> None:
        if self._renderer is not None:
            self._renderer.RemoveViewProp(self.actor)
        self._renderer = renderer
        if renderer is not None:
            renderer.AddViewProp(self.actor)

    def show(self, start: tuple[float, float], end: tuple[float, float]) -> None:
        (x0, y0), (x1, y1) = start, end
        for index, (x, y) in enumerate(((x0, y0), (x1, y0), (x1, y1), (x0, y1))):
            self._points.SetPoint(index, x, y, 0.0)
        self._points.Modified()
        self.actor.VisibilityOn()

    def hide(self) -> None:
        self.actor.VisibilityOff()
