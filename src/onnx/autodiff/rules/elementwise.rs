//! Arithmetic and other elementwise operators, with broadcasting reduced back to each input's shape.

use super::{first_only, grad0, input, output, RuleError, RuleTable};
use crate::onnx::autodiff::GradContext;
use crate::onnx::proto::NodeProto;

pub(super) fn register(t: &mut RuleTable) {
    t.register("", "Add", add);
    t.register("", "Sub", sub);
    t.register("", "Mul", mul);
    t.register("", "Div", div);
    t.register("", "Neg", neg);
    t.register("", "Abs", abs);
    t.register("", "Exp", exp);
    t.register("", "Log", log);
    t.register("", "Sqrt", sqrt);
    t.register("", "Reciprocal", reciprocal);
    t.register("", "Pow", pow);
    t.register("", "Sum", sum);
    t.register("", "Mean", mean);
    t.register("", "Where", where_);
    t.register("", "Identity", identity);
    t.register("", "Dropout", identity);
    t.register("", "Cast", cast);
    t.register("", "Max", max_min);
    t.register("", "Min", max_min);
}

type Grads = Result<Vec<Option<String>>, RuleError>;

fn add(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], needs: &[bool]) -> Grads {
    let g = grad0(n, g)?;
    let y = output(n);
    Ok(vec![
        if needs[0] {
            Some(ctx.unbroadcast(g, y, input(n, 0))?)
        } else {
            None
        },
        if needs[1] {
            Some(ctx.unbroadcast(g, y, input(n, 1))?)
        } else {
            None
        },
    ])
}

fn sub(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], needs: &[bool]) -> Grads {
    let g = grad0(n, g)?;
    let y = output(n);
    let db = if needs[1] {
        let neg = ctx.emit("Neg", &[g], vec![]);
        Some(ctx.unbroadcast(&neg, y, input(n, 1))?)
    } else {
        None
    };
    Ok(vec![
        if needs[0] {
            Some(ctx.unbroadcast(g, y, input(n, 0))?)
        } else {
            None
        },
        db,
    ])
}

fn mul(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], needs: &[bool]) -> Grads {
    let g = grad0(n, g)?;
    let (a, b, y) = (input(n, 0), input(n, 1), output(n));
    let mut out = vec![None, None];
    if needs[0] {
        let ga = ctx.emit("Mul", &[g, b], vec![]);
        out[0] = Some(ctx.unbroadcast(&ga, y, a)?);
    }
    if needs[1] {
        let gb = ctx.emit("Mul", &[g, a], vec![]);
        out[1] = Some(ctx.unbroadcast(&gb, y, b)?);
    }
    Ok(out)
}

fn div(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], needs: &[bool]) -> Grads {
    let g = grad0(n, g)?;
    let (a, b, y) = (input(n, 0), input(n, 1), output(n));
    let mut out = vec![None, None];
    if needs[0] {
        let ga = ctx.emit("Div", &[g, b], vec![]);
        out[0] = Some(ctx.unbroadcast(&ga, y, a)?);
    }
    if needs[1] {
        // d(a/b)/db = -y/b
        let gy = ctx.emit("Mul", &[g, y], vec![]);
        let q = ctx.emit("Div", &[&gy, b], vec![]);
        let gb = ctx.emit("Neg", &[&q], vec![]);
        out[1] = Some(ctx.unbroadcast(&gb, y, b)?);
    }
    Ok(out)
}

fn neg(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], _: &[bool]) -> Grads {
    let g = grad0(n, g)?;
    Ok(vec![Some(ctx.emit("Neg", &[g], vec![]))])
}

fn abs(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], _: &[bool]) -> Grads {
    let g = grad0(n, g)?;
    let s = ctx.emit("Sign", &[input(n, 0)], vec![]);
    Ok(vec![Some(ctx.emit("Mul", &[g, &s], vec![]))])
}

fn exp(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], _: &[bool]) -> Grads {
    let g = grad0(n, g)?;
    Ok(vec![Some(ctx.emit("Mul", &[g, output(n)], vec![]))])
}

fn log(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], _: &[bool]) -> Grads {
    let g = grad0(n, g)?;
    Ok(vec![Some(ctx.emit("Div", &[g, input(n, 0)], vec![]))])
}

fn sqrt(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], _: &[bool]) -> Grads {
    let g = grad0(n, g)?;
    let half = ctx.scalar(0.5);
    let q = ctx.emit("Div", &[g, output(n)], vec![]);
    Ok(vec![Some(ctx.emit("Mul", &[&q, &half], vec![]))])
}

fn reciprocal(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], _: &[bool]) -> Grads {
    // d(1/x) = -y^2
    let g = grad0(n, g)?;
    let y2 = ctx.emit("Mul", &[output(n), output(n)], vec![]);
    let p = ctx.emit("Mul", &[g, &y2], vec![]);
    Ok(vec![Some(ctx.emit("Neg", &[&p], vec![]))])
}

fn pow(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], needs: &[bool]) -> Grads {
    if needs.get(1).copied().unwrap_or(false) {
        return Err(RuleError::new(
            n,
            "Pow with an exponent that depends on the input is not supported",
        ));
    }
    let g = grad0(n, g)?;
    let (x, e, y) = (input(n, 0), input(n, 1), output(n));
    // The exponent may be an integer tensor: bring it to float first.
    let ef = ctx.emit("CastLike", &[e, x], vec![]);
    let one = ctx.scalar(1.0);
    let em1 = ctx.emit("Sub", &[&ef, &one], vec![]);
    let p = ctx.emit("Pow", &[x, &em1], vec![]);
    let d = ctx.emit("Mul", &[&p, &ef], vec![]);
    let gx = ctx.emit("Mul", &[g, &d], vec![]);
    Ok(vec![Some(ctx.unbroadcast(&gx, y, x)?), None])
}

fn sum(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], needs: &[bool]) -> Grads {
    let g = grad0(n, g)?;
    let y = output(n);
    let mut out = Vec::new();
    for (i, need) in needs.iter().enumerate() {
        out.push(if *need {
            Some(ctx.unbroadcast(g, y, input(n, i))?)
        } else {
            None
        });
    }
    Ok(out)
}

fn mean(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], needs: &[bool]) -> Grads {
    let g = grad0(n, g)?;
    let k = ctx.scalar(n.input.len() as f32);
    let scaled = ctx.emit("Div", &[g, &k], vec![]);
    let y = output(n);
    let mut out = Vec::new();
    for (i, need) in needs.iter().enumerate() {
        out.push(if *need {
            Some(ctx.unbroadcast(&scaled, y, input(n, i))?)
        } else {
            None
        });
    }
    Ok(out)
}

fn where_(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], needs: &[bool]) -> Grads {
    let g = grad0(n, g)?;
    let (c, y) = (input(n, 0), output(n));
    let zero = ctx.scalar(0.0);
    let mut out = vec![None, None, None];
    if needs[1] {
        let ga = ctx.emit("Where", &[c, g, &zero], vec![]);
        out[1] = Some(ctx.unbroadcast(&ga, y, input(n, 1))?);
    }
    if needs[2] {
        let gb = ctx.emit("Where", &[c, &zero, g], vec![]);
        out[2] = Some(ctx.unbroadcast(&gb, y, input(n, 2))?);
    }
    Ok(out)
}

fn identity(_: &mut GradContext, n: &NodeProto, g: &[Option<String>], _: &[bool]) -> Grads {
    Ok(first_only(n, grad0(n, g)?.to_string()))
}

fn cast(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], _: &[bool]) -> Grads {
    let g = grad0(n, g)?;
    let x = input(n, 0);
    Ok(vec![Some(ctx.emit("CastLike", &[g, x], vec![]))])
}

fn max_min(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], needs: &[bool]) -> Grads {
    // The gradient goes to the inputs equal to the result (split evenly between ties).
    let g = grad0(n, g)?;
    let y = output(n);
    let mut masks = Vec::new();
    for i in 0..n.input.len() {
        let eq = ctx.emit("Equal", &[input(n, i), y], vec![]);
        masks.push(ctx.emit("CastLike", &[&eq, y], vec![]));
    }
    let count = if masks.len() == 1 {
        masks[0].clone()
    } else {
        let refs: Vec<&str> = masks.iter().map(String::as_str).collect();
        ctx.emit("Sum", &refs, vec![])
    };
    let share = ctx.emit("Div", &[g, &count], vec![]);
    let mut out = Vec::new();
    for (i, need) in needs.iter().enumerate() {
        out.push(if *need {
            let gi = ctx.emit("Mul", &[&share, &masks[i]], vec![]);
            Some(ctx.unbroadcast(&gi, y, input(n, i))?)
        } else {
            None
        });
    }
    Ok(out)
}
