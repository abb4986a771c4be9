//! Polygons of the plane, as `[x, y]` points in millimetres (the vertebra's axial plane where
//! the planner uses them): convex hull and offset of a convex polygon.

use crate::math::Real;

/// Convex hull, counter-clockwise (Andrew's monotone chain).
pub fn convex_hull(points: &[[Real; 2]]) -> Vec<[Real; 2]> {
    let mut p: Vec<[Real; 2]> = points.to_vec();
    p.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
    p.dedup();
    if p.len() < 3 {
        return p;
    }
    let cross = |o: [Real; 2], a: [Real; 2], b: [Real; 2]| {
        (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
    };
    let mut lower: Vec<[Real; 2]> = Vec::new();
    for &q in &p {
        while lower.len() >= 2 && cross(lower[lower.len() - 2], lower[lower.len() - 1], q) <= 0.0 {
            lower.pop();
        }
        lower.push(q);
    }
    let mut upper: Vec<[Real; 2]> = Vec::new();
    for &q in p.iter().rev() {
        while upper.len() >= 2 && cross(upper[upper.len() - 2], upper[upper.len() - 1], q) <= 0.0 {
            upper.pop();
        }
        upper.push(q);
    }
    lower.pop();
    upper.pop();
    lower.extend(upper);
    lower
}

/// Offset a convex counter-clockwise polygon: every edge moves outwards by `d` (inwards for
/// negative `d`), and each vertex goes to the intersection of its two offset edges.
pub fn offset_convex(poly: &[[Real; 2]], d: Real) -> Vec<[Real; 2]> {
    let n = poly.len();
    if n < 3 {
        return poly.to_vec();
    }
    let normal = |a: [Real; 2], b: [Real; 2]| {
        let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
        let l = (dx * dx + dy * dy).sqrt().max(1e-12);
        [dy / l, -dx / l]
    };
    (0..n)
        .map(|i| {
            let prev = poly[(i + n - 1) % n];
            let cur = poly[i];
            let next = poly[(i + 1) % n];
            let n1 = normal(prev, cur);
            let n2 = normal(cur, next);
            // Intersection of the two offset lines through cur: solve n1.x = n1.cur + d,
            // n2.x = n2.cur + d.
            let det = n1[0] * n2[1] - n1[1] * n2[0];
            if det.abs() < 1e-9 {
                [cur[0] + n1[0] * d, cur[1] + n1[1] * d]
            } else {
                let c1 = n1[0] * cur[0] + n1[1] * cur[1] + d;
                let c2 = n2[0] * cur[0] + n2[1] * cur[1] + d;
                [
                    (c1 * n2[1] - c2 * n1[1]) / det,
                    (n1[0] * c2 - n2[0] * c1) / det,
                ]
            }
        })
        .collect()
}
