"""A safe arithmetic evaluator: the expression is parsed with `ast` and only number literals,
+ - * / // % **, unary +/-, parentheses and a few math functions are walked -- never `eval`.
Names, attributes, subscripts, calls to anything else, and huge powers are rejected."""
from __future__ import annotations

import ast
import math
import operator
import re

_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCS = {"sqrt": math.sqrt, "abs": abs, "round": round, "min": min, "max": max, "log": math.log,
          "exp": math.exp, "floor": math.floor, "ceil": math.ceil}
_CONSTS = {"pi": math.pi, "e": math.e}
MAX_EXPONENT = 1000
MAX_DIGITS = 4300  # Python's own int->str limit


class CalcError(ValueError):
    pass


def _walk(node):
    if isinstance(node, ast.Expression):
        return _walk(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.Name) and node.id in _CONSTS:
        return _CONSTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_walk(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
        a, b = _walk(node.left), _walk(node.right)
        if isinstance(node.op, ast.Pow) and abs(b) > MAX_EXPONENT:
            raise CalcError(f"exponent {b} is too large (limit {MAX_EXPONENT})")
        if isinstance(node.op, ast.Mult) and isinstance(a, int) and isinstance(b, int) \
                and a.bit_length() + b.bit_length() > MAX_DIGITS * 3.33:
            raise CalcError("result too large")
        try:
            out = _BIN[type(node.op)](a, b)
        except ZeroDivisionError:
            raise CalcError("division by zero") from None
        except OverflowError:
            raise CalcError("result too large") from None
        if isinstance(out, int) and out.bit_length() > MAX_DIGITS * 3.33:
            raise CalcError("result too large")
        return out
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS and not node.keywords:
        try:
            return _FUNCS[node.func.id](*[_walk(a) for a in node.args])
        except (ValueError, TypeError, OverflowError) as e:
            raise CalcError(f"{node.func.id}: {e}") from None
    raise CalcError(f"not allowed in an arithmetic expression: {ast.dump(node)[:60]}")


def calculate(expression: str) -> int | float:
    """Value of an arithmetic expression such as "(3 + 4) * 2 ** 3 / sqrt(16)"."""
    expr = expression.strip().replace("^", "**").replace("×", "*").replace("÷", "/")
    expr = re.sub(r"(?<=\d),(?=\d{3}\b)", "", expr)  # thousands separators: 1,234 -> 1234
    if len(expr) > 500:
        raise CalcError("expression too long")
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        raise CalcError(f"cannot parse {expression!r}") from None
    out = _walk(tree)
    if isinstance(out, float) and out.is_integer() and abs(out) < 1e15:
        return int(out)
    return out
